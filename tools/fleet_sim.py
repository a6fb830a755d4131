"""A fleet pulling from one TUF repository: N device roots, each ``edgecv update`` a process of its own, polling one
static HTTP server on 127.0.0.1 (tools/static_server.py) concurrently.

    python tools/fleet_sim.py --devices 200 --bundle SIGNED_BUNDLE --key fleet.pem --trust fleet.pub

It reports:
- the cost of idling a fleet: server requests and bytes per device per poll when nothing changed, and how many
  bundles were downloaded (none should be);
- the time to converge after a publish: one poll round of every device (``--workers`` at a time), until all run
  the new release;
- the server killed mid-rollout (after half the converge time of the previous round): every device is on a valid
  slot, the new release or the one before, and none is left half-installed.

Writes fleet.json and fleet.md into ``--out``. The bundle is published as its own release, then re-signed as the
next two releases (``--key``), so it needs the fleet's private key.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from static_server import StaticServer  # noqa: E402


def edgecv(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "edgecv", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def release_of(bundle, n: int, out: Path, key: str) -> Path:
    """A copy of ``bundle`` as release ``n``, re-checksummed and signed."""
    from edgecv.bundle.manifest import manifest_bytes
    from edgecv.utils.io import sha256_file

    dst = out / f"release-{n}"
    shutil.copytree(bundle, dst, ignore=shutil.ignore_patterns("model.sig"))
    m = json.loads((dst / "manifest.json").read_text())
    m["release"] = n
    for name, info in m["files"].items():
        info["sha256"], info["size"] = sha256_file(dst / name), (dst / name).stat().st_size
    (dst / "manifest.json").write_bytes(manifest_bytes(m))
    r = edgecv("sign", dst, "--key", key)
    if r.returncode:
        raise SystemExit(f"signing release {n} failed: {r.stderr.strip()}")
    return dst


def poll_round(devices, url: str, env, workers: int, first: bool = False, repo=None):
    """One ``edgecv update`` per device, ``workers`` at a time: [(returncode, last output line)]."""
    def one(d):
        extra = ["--trusted-root", repo / "metadata" / "1.root.json"] if first else []
        r = edgecv("update", "--repo-url", url, "--root", d, "--timeout", "20", *extra, env=env)
        lines = (r.stdout + r.stderr).strip().splitlines()
        return r.returncode, lines[-1] if lines else ""

    with cf.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, devices))


def active(device: Path):
    """The release a device runs (None: no valid active slot)."""
    from edgecv.bundle.reader import open_bundle

    try:
        return open_bundle(device).manifest.get("release")
    except Exception:  # noqa: BLE001 - any damage is what this looks for
        return None


def simulate(a, out: Path) -> dict:
    from edgecv.bundle.reader import open_bundle

    env = {**os.environ, "EDGECV_TRUST": a.trust, "EDGECV_CACHE": str(out / "cache")}
    base = int(open_bundle(a.bundle).manifest.get("release", 0) or 0)
    repo, devices = out / "repo", [out / "devices" / f"v{i:04d}" for i in range(a.devices)]
    r = edgecv("publish", a.bundle, "--repo", repo, "--init", env=env)
    if r.returncode:
        raise SystemExit(f"publish failed: {r.stderr.strip()}")
    srv = StaticServer(str(repo)).start()
    res = {"devices": a.devices, "workers": a.workers}
    try:
        t0 = time.monotonic()
        first = poll_round(devices, srv.url, env, a.workers, first=True, repo=repo)
        res["bootstrap"] = {"seconds": round(time.monotonic() - t0, 2), "ok": sum(rc == 0 for rc, _ in first),
                            "failed": [line for rc, line in first if rc][:3]}
        res["idle"] = idle(devices, srv, env, a.workers)
        res["rollout"] = rollout(a, devices, srv, env, out, base + 1, repo)
        res["server_killed"] = killed(a, devices, srv, env, out, base + 2, res["rollout"]["seconds"] / 2, repo)
    finally:
        srv.stop()
    return res


def idle(devices, srv, env, workers) -> dict:
    srv.requests.clear()
    t0 = time.monotonic()
    codes = poll_round(devices, srv.url, env, workers)
    n = len(devices)
    return {"seconds": round(time.monotonic() - t0, 2), "up_to_date": sum(rc == 0 for rc, _ in codes),
            "requests_per_device_per_poll": round(len(srv.requests) / n, 2),
            "bytes_per_device_per_poll": round(sum(max(q["bytes"], 0) for q in srv.requests) / n),
            "bundle_downloads": sum(q["path"].endswith(".tar") for q in srv.requests),
            "paths": sorted({q["path"] for q in srv.requests})}


def rollout(a, devices, srv, env, out: Path, n: int, repo: Path) -> dict:
    edgecv("publish", release_of(a.bundle, n, out, a.key), "--repo", repo, env=env)
    t0 = time.monotonic()
    codes = poll_round(devices, srv.url, env, a.workers)
    seconds = time.monotonic() - t0
    return {"release": n, "seconds": round(seconds, 2), "converged": sum(active(d) == n for d in devices),
            "failed": [line for rc, line in codes if rc][:3]}


def killed(a, devices, srv, env, out: Path, n: int, after_s: float, repo: Path) -> dict:
    edgecv("publish", release_of(a.bundle, n, out, a.key), "--repo", repo, env=env)
    with cf.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(poll_round, devices, srv.url, env, a.workers)
        time.sleep(after_s)
        srv.stop()
        codes = fut.result()
    runs = [active(d) for d in devices]
    return {"release": n, "killed_after_s": round(after_s, 2), "on_new": runs.count(n), "on_previous": runs.count(n - 1),
            "on_valid_slot": sum(r in (n, n - 1) for r in runs),
            "exit_codes": {str(c): sum(rc == c for rc, _ in codes) for c in sorted({rc for rc, _ in codes})}}


def markdown(res: dict) -> str:
    i, r, k = res["idle"], res["rollout"], res["server_killed"]
    return "\n".join([
        f"# Fleet simulation: {res['devices']} devices, {res['workers']} polling at a time", "",
        "| what | result |", "|---|---|",
        f"| idle poll (nothing changed) | {i['requests_per_device_per_poll']} requests and "
        f"{i['bytes_per_device_per_poll']} bytes per device ({', '.join(i['paths'])}); {i['bundle_downloads']} "
        "bundles downloaded |",
        f"| converge after a publish | {r['converged']} of {res['devices']} on release {r['release']} after one poll "
        f"round of {r['seconds']} s |",
        f"| server killed {k['killed_after_s']} s into a rollout | {k['on_valid_slot']} of {res['devices']} on a "
        f"valid slot ({k['on_new']} on the new release, {k['on_previous']} on the one before); exit codes "
        f"{k['exit_codes']} |", ""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--workers", type=int, default=8, help="device processes polling at a time")
    ap.add_argument("--bundle", required=True, help="a signed bundle (its release is published first)")
    ap.add_argument("--key", required=True, help="the fleet's private key (signs the next releases)")
    ap.add_argument("--trust", required=True, help="the fleet's public key (the devices trust it)")
    ap.add_argument("--out", default=None, help="working folder and report [default: a temporary one]")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.devices < 1 or a.workers < 1:
        ap.error("--devices and --workers must be >= 1")
    a.bundle, a.key, a.trust = (os.path.abspath(x) for x in (a.bundle, a.key, a.trust))  # the devices run elsewhere
    out = Path(os.path.abspath(a.out)) if a.out else Path(tempfile.mkdtemp(prefix="edgecv-fleet-"))
    if out.exists() and any(out.iterdir()):
        ap.error(f"--out {out}: not empty (the simulation makes its repository and devices there)")
    out.mkdir(parents=True, exist_ok=True)
    try:
        res = simulate(a, out)
    except KeyboardInterrupt:
        print("interrupted: no results written", file=sys.stderr)
        return 130
    (out / "fleet.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "fleet.md").write_text(markdown(res))
    print(json.dumps(res) if a.json else markdown(res))
    return 0 if res["server_killed"]["on_valid_slot"] == a.devices else 1


if __name__ == "__main__":
    sys.exit(main())
