"""Fleet updates over TUF (issue 30): ``edgecv publish`` to a repository of static files, served by a real HTTP
server on 127.0.0.1 (tools/static_server.py, started by a fixture), pulled and installed by ``edgecv update``. Each
attack TUF exists for is staged against a device that runs release 1, ends in a refusal that names it, and leaves
the active slot as it was."""
import collections
import errno
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import ROOT, free_port, invoke, release, unanswerable_golden

sys.path.insert(0, str(ROOT / "tools"))
from static_server import StaticServer  # noqa: E402

import edgecv.utils.io  # noqa: E402
from edgecv.bundle.reader import open_bundle  # noqa: E402
from edgecv.deploy import tuf_repo  # noqa: E402


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, keys):
    monkeypatch.setenv("EDGECV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("EDGECV_TRUST", str(keys / "dev.pub"))  # the vehicle trusts the fleet's signing key


def signed(tiny_bundle, dst, n, keys):
    b = release(tiny_bundle, dst, n)
    assert invoke("sign", b, "--key", keys / "dev.pem").exit_code == 0
    return b


@pytest.fixture
def fleet(tmp_path, tiny_bundle, keys):
    """A repository with release 1 published, served on 127.0.0.1, and a device that installed it."""
    repo = tmp_path / "repo"
    r = invoke("publish", signed(tiny_bundle, tmp_path / "r1", 1, keys), "--repo", repo, "--init")
    assert r.exit_code == 0, r.output
    srv = StaticServer(str(repo)).start()
    device = tmp_path / "vehicle"
    r = update(srv.url, device, "--trusted-root", repo / "metadata" / "1.root.json")
    assert r.exit_code == 0 and "installed: release 1" in r.output, r.output
    yield {"repo": repo, "srv": srv, "device": device, "tmp": tmp_path}
    srv.stop()


def update(url, device, *args):
    return invoke("update", "--repo-url", url, "--root", device, *args)


def active_release(device) -> int:
    return open_bundle(device).manifest["release"]


def publish(fleet, tiny_bundle, keys, n, channel="stable"):
    b = signed(tiny_bundle, fleet["tmp"] / f"r{n}-{channel}", n, keys)
    r = invoke("publish", b, "--repo", fleet["repo"], "--channel", channel)
    assert r.exit_code == 0, r.output


def targets_of(fleet, suffix):
    return [p for p in (fleet["repo"] / "targets").rglob("*") if p.name.endswith(suffix)]


# -- the flow ------------------------------------------------------------------------------------------------------

def test_publish_serve_update_then_idle_polls_download_no_bundle(fleet, tiny_bundle, keys):
    srv, device = fleet["srv"], fleet["device"]
    srv.requests.clear()
    r = update(srv.url, device)
    assert r.exit_code == 0 and r.output.strip().endswith("up to date")
    assert not any(q["path"].endswith(".tar") for q in srv.requests)  # an installed release is not downloaded again
    publish(fleet, tiny_bundle, keys, 2)
    r = update(srv.url, device, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output.strip().splitlines()[-1])
    assert rep["status"] == "installed" and rep["release"] == 2 and rep["slot"] == "b"
    assert rep["bundle"].endswith("/targets/stable/tiny_cnn-r2.tar")
    s = json.loads(invoke("status", "--root", device, "--json").output)
    assert (s["active"]["release"], s["previous"]["release"]) == (2, 1)
    assert not list((device / "tuf" / "downloads").rglob("*.tar"))  # no bundle left behind (the index stays)
    assert not [p for p in device.iterdir() if p.name.startswith((".incoming", ".update"))]


def test_a_release_this_device_refused_is_not_downloaded_again_every_tick(fleet, tiny_bundle, keys, monkeypatch):
    """Each timer tick downloaded and tested the same refused bundle again, for ever."""
    from edgecv.deploy import update as upd

    srv, device = fleet["srv"], fleet["device"]
    b = release(tiny_bundle, fleet["tmp"] / "r2-fails-acceptance", 2)
    unanswerable_golden(b)  # golden vectors no device can answer: the acceptance test refuses it
    assert invoke("sign", b, "--key", keys / "dev.pem").exit_code == 0
    assert invoke("publish", b, "--repo", fleet["repo"]).exit_code == 0

    def tars():
        return sum(q["path"].endswith(".tar") for q in srv.requests)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    srv.requests.clear()
    monkeypatch.setattr(edgecv.utils.io, "atomic_write_json", full)  # the record is best effort
    r = update(srv.url, device)
    assert r.exit_code == 2 and "acceptance test failed" in r.output and tars() == 1, r.output
    monkeypatch.undo()
    r = update(srv.url, device)
    assert r.exit_code == 2 and "acceptance" in r.output and tars() == 2, r.output
    srv.requests.clear()
    r = update(srv.url, device, "--json")
    assert r.exit_code == 0 and "release 2 was refused on this device" in r.output, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["refused_here"] == [2] and tars() == 0
    assert update(srv.url, device, "--retry-refused").exit_code == 2 and tars() == 1
    monkeypatch.setattr(upd, "REFUSED_RETRY_S", 0.0)  # a day later: tried again (a fixed trust setting is seen)
    assert update(srv.url, device).exit_code == 2 and tars() == 2
    monkeypatch.undo()
    publish(fleet, tiny_bundle, keys, 3)  # a newer release is not held back by the refused one
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2**20, 2**20 - 1000, 1000))
    r = update(srv.url, device)  # a full disk is the device's state: release 3 is not held back for a day
    assert r.exit_code == 2 and "MiB free; nothing was copied" in r.output, r.output
    monkeypatch.undo()
    r = update(srv.url, device)
    assert r.exit_code == 0 and "installed: release 3" in r.output and active_release(device) == 3, r.output


def test_publishing_needs_a_signed_newer_release_and_works_without_the_root_key(fleet, tiny_bundle, keys):
    unsigned = release(tiny_bundle, fleet["tmp"] / "u", 5)
    r = invoke("publish", unsigned, "--repo", fleet["repo"])
    assert r.exit_code == 2 and "not signed" in r.output
    r = invoke("publish", signed(tiny_bundle, fleet["tmp"] / "again", 1, keys), "--repo", fleet["repo"])
    assert r.exit_code == 2 and "not newer" in r.output
    keys_dir = fleet["repo"].with_name("repo.keys")
    shutil.move(keys_dir / "root.pem", fleet["tmp"] / "offline-root.pem")  # the root key kept offline
    publish(fleet, tiny_bundle, keys, 3)
    r = invoke("repo", "rotate", fleet["repo"], "timestamp")
    assert r.exit_code == 2 and "root key is not here" in r.output


def test_private_keys_are_never_readable_by_others_even_in_a_folder_that_is(tmp_path, monkeypatch):
    """The keys were renamed into place at 0644 and narrowed to 0600 only afterwards."""
    keys_dir = tmp_path / "fleet.keys"
    keys_dir.mkdir(mode=0o755)
    keys_dir.chmod(0o755)
    modes, replace = {}, os.replace

    def watched(src, dst):
        modes[os.path.basename(dst)] = os.stat(src).st_mode & 0o777
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", watched)
    assert invoke("repo", "init", tmp_path / "fleet").exit_code == 0
    pems = {n: m for n, m in modes.items() if n.endswith(".pem")}
    assert len(pems) == 6 and set(pems.values()) == {0o600}, pems
    assert {p.stat().st_mode & 0o777 for p in keys_dir.iterdir()} == {0o600}


def test_what_an_update_killed_midway_left_is_swept_by_the_next(fleet, tiny_bundle, keys):
    """A power cut during an update left its unpacked staging folder and its download for ever: repeated, they
    filled the vehicle's disk."""
    from edgecv.utils.io import TMP_TAG

    device = fleet["device"]
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = device / f".update{TMP_TAG}{dead.pid}-0123456789ab"
    live = device / f".update{TMP_TAG}1-0123456789ab"  # pid 1 runs: not ours to remove
    for d in (stale, live):
        d.mkdir()
        (d / "model_fp32.onnx").write_bytes(b"x" * 1000)
    download = device / "tuf" / "downloads" / "stable%2Fmodel-r2.tar"
    download.write_bytes(b"partial")
    publish(fleet, tiny_bundle, keys, 2)
    r = update(fleet["srv"].url, device)
    assert r.exit_code == 0 and "installed: release 2" in r.output, r.output
    assert not stale.exists() and not download.exists() and live.exists()
    assert not [p for p in device.iterdir() if p.name.startswith(".update") and p != live]


def test_init_never_replaces_keys_and_says_what_a_cut_short_init_leaves(fleet, tmp_path):
    keys_dir = fleet["repo"].with_name("repo.keys")
    before = {p.name: p.read_bytes() for p in keys_dir.iterdir()}
    r = invoke("repo", "init", fleet["repo"])
    assert r.exit_code == 2 and "refusing to replace them" in r.output and "cut short" not in r.output
    r = invoke("repo", "init", tmp_path / "typo", "--keys", keys_dir)  # a live repository's keys, a new folder
    assert r.exit_code == 2 and "if an earlier `repo init` was cut short" in r.output, r.output
    assert {p.name: p.read_bytes() for p in keys_dir.iterdir()} == before and not (tmp_path / "typo").exists()


def test_another_repositorys_keys_are_refused_before_anything_is_written(fleet, tiny_bundle, keys, tmp_path):
    """publish --keys of another repository said "published" and wrote metadata every vehicle refuses."""
    other = tmp_path / "other"
    assert invoke("repo", "init", other).exit_code == 0
    before = sorted(p.relative_to(fleet["repo"]) for p in fleet["repo"].rglob("*"))
    b = signed(tiny_bundle, tmp_path / "r2", 2, keys)
    for args in (["publish", b, "--repo", fleet["repo"], "--keys", tmp_path / "other.keys"],
                 ["repo", "rotate", fleet["repo"], "canary", "--keys", tmp_path / "other.keys"]):
        r = invoke(*args)
        assert r.exit_code == 2 and "key that" in r.output and "trusts" in r.output, r.output
    assert sorted(p.relative_to(fleet["repo"]) for p in fleet["repo"].rglob("*")) == before
    assert not list((tmp_path / "other.keys").glob("*.revoked-*"))
    publish(fleet, tiny_bundle, keys, 2)  # its own keys still publish, and a vehicle takes the release
    assert update(fleet["srv"].url, fleet["device"]).exit_code == 0 and active_release(fleet["device"]) == 2


def _holding_the_lock(repo, seconds):
    """Another process that holds the repository's writer lock for ``seconds``, started and holding."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from edgecv.deploy.tuf_repo import RepoPaths, repo_lock; "
        "cm = repo_lock(RepoPaths.of(sys.argv[1])); cm.__enter__(); print('locked', flush=True); "
        "time.sleep(float(sys.argv[2]))"), str(repo), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_writers_of_one_repository_wait_for_each_other(fleet, monkeypatch):
    """publish, rotate and timestamp each read the latest metadata version and write the next: a timer's
    `repo timestamp` during a publish wrote the same timestamp version again, pointing back at the old snapshot."""
    repo = fleet["repo"]
    version = json.loads((repo / "metadata" / "timestamp.json").read_text())["signed"]["version"]
    holder = _holding_the_lock(repo, 2)
    try:
        t0 = time.monotonic()
        r = invoke("repo", "timestamp", repo)
        assert r.exit_code == 0 and f"timestamp version {version + 1}" in r.output, r.output
        assert time.monotonic() - t0 > 1.0 and holder.wait(5) == 0  # it waited for the holder to end
    finally:
        holder.kill()
    holder = _holding_the_lock(repo, 30)
    try:
        monkeypatch.setattr(tuf_repo, "LOCK_WAIT_S", 0.5)
        for args in (["repo", "timestamp", repo], ["repo", "rotate", repo, "canary"]):
            r = invoke(*args)
            assert r.exit_code == 2 and f"another edgecv process (pid {holder.pid})" in r.output, r.output
    finally:
        holder.kill()


# -- the attacks -----------------------------------------------------------------------------------------------------

def refused(fleet, needle, *args, url=None):
    r = update(url or fleet["srv"].url, fleet["device"], *args)
    assert r.exit_code == 2 and needle in r.output, r.output
    assert active_release(fleet["device"]) == 1 and "Traceback" not in r.output
    return r


def test_arbitrary_package_is_refused(fleet, tiny_bundle, keys):
    publish(fleet, tiny_bundle, keys, 2)
    (tar,) = targets_of(fleet, "tiny_cnn-r2.tar")
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same length, other bytes: what a compromised mirror would serve
    tar.write_bytes(bytes(data))
    refused(fleet, "arbitrary package")


def test_endless_data_is_refused(fleet, tiny_bundle, keys):
    publish(fleet, tiny_bundle, keys, 2)
    fleet["srv"].endless.add("tiny_cnn-r2.tar")
    refused(fleet, "endless data")


def test_metadata_rollback_by_a_mirror_serving_old_valid_metadata_is_refused(fleet, tiny_bundle, keys):
    old = fleet["tmp"] / "old-repo"
    shutil.copytree(fleet["repo"], old)  # the repository as it was, every signature valid
    publish(fleet, tiny_bundle, keys, 2)
    publish(fleet, tiny_bundle, keys, 3, channel="canary")
    r = update(fleet["srv"].url, fleet["device"], "--channel", "canary")  # the device sees the newest metadata
    assert r.exit_code == 0 and active_release(fleet["device"]) == 3
    mirror = StaticServer(str(old)).start()
    try:
        r = update(mirror.url, fleet["device"])
        assert r.exit_code == 2 and "rollback attack" in r.output, r.output
        assert active_release(fleet["device"]) == 3
    finally:
        mirror.stop()


def test_release_rollback_is_refused_by_the_anti_rollback_floor(fleet, tiny_bundle, keys):
    publish(fleet, tiny_bundle, keys, 4)
    assert update(fleet["srv"].url, fleet["device"]).exit_code == 0 and active_release(fleet["device"]) == 4
    publish(fleet, tiny_bundle, keys, 2, channel="canary")  # a validly signed, older release
    r = update(fleet["srv"].url, fleet["device"], "--channel", "canary")
    assert r.exit_code == 0 and "up to date: installed release 4" in r.output
    assert active_release(fleet["device"]) == 4


def test_freeze_an_expired_timestamp_is_refused(fleet):
    tuf_repo.refresh_timestamp(tuf_repo.RepoPaths.of(fleet["repo"]), days=1 / 86400)  # valid for one second
    time.sleep(1.5)
    refused(fleet, "freeze attack")


def test_mix_and_match_snapshot_and_targets_is_refused(fleet, tiny_bundle, keys):
    publish(fleet, tiny_bundle, keys, 2)
    md = fleet["repo"] / "metadata"
    (md / "3.stable.json").write_bytes((md / "2.stable.json").read_bytes())  # version 2 where snapshot says 3
    refused(fleet, "mix-and-match")


def test_a_rotated_out_key_is_refused(fleet, tiny_bundle, keys):
    keys_dir = fleet["repo"].with_name("repo.keys")
    r = invoke("repo", "rotate", fleet["repo"], "timestamp")
    assert r.exit_code == 0, r.output
    assert update(fleet["srv"].url, fleet["device"]).exit_code == 0  # the device learns the new root
    (revoked,) = keys_dir.glob("timestamp.pem.revoked-*")
    # an attacker holding the old key signs a timestamp (edgecv itself refuses to sign with a key not trusted)
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner, SSlibKey

    priv = load_pem_private_key(revoked.read_bytes(), None)
    paths = tuf_repo.RepoPaths.of(fleet["repo"])
    ts = tuf_repo._latest(paths, "timestamp")
    ts.signed.version += 1
    tuf_repo._write(paths, "timestamp", ts, [CryptoSigner(priv, SSlibKey.from_crypto(priv.public_key()))])
    refused(fleet, "not signed by the keys this device trusts")


def test_offline_a_404_and_a_stalled_server_leave_the_slot_alone(fleet):
    for url in (f"http://127.0.0.1:{free_port()}", fleet["srv"].url + "/not-the-repo"):
        r = update(url, fleet["device"], "--timeout", "3")
        assert r.exit_code == 3 and "nothing changed" in r.output, r.output
        assert active_release(fleet["device"]) == 1


def test_first_update_needs_a_pinned_root(fleet, tmp_path):
    r = update(fleet["srv"].url, tmp_path / "new-vehicle")
    assert r.exit_code == 2 and "--trusted-root" in r.output
    bad = tmp_path / "bad-root.json"
    bad.write_text("{}")
    r = update(fleet["srv"].url, tmp_path / "new-vehicle", "--trusted-root", bad)
    assert r.exit_code == 2 and "trusted root does not verify" in r.output
    # read whole, /dev/zero took all 24 GB of memory and the kernel killed the update
    huge = tmp_path / "huge-root.json"
    with open(huge, "wb") as f:
        f.truncate(30 << 30)  # sparse: 30 GB that take no disk
    for pinned, why in (("/dev/zero", "a device, pipe or socket"), (huge, "over the 16 MB")):
        r = update(fleet["srv"].url, tmp_path / "new-vehicle", "--trusted-root", pinned)
        assert r.exit_code == 2 and f"--trusted-root {pinned}: not a root.json" in r.output and why in r.output


@pytest.mark.parametrize("url", ["updates.example/fleet", "file:///srv/fleet", "ftp://h/x", "http://",
                                 "http://127.0.0.1:99999", "https://h:abc/x"])
def test_a_repo_url_that_names_no_http_repository_is_refused_as_a_typo_not_retried_as_offline(url, tmp_path):
    """A timer retries exit 3 (offline) forever; a URL no server can answer is the user's error (2), refused
    before the install root or a timer unit is written."""
    for extra in ([], ["--timer", tmp_path / "units"]):
        r = update(url, tmp_path / "vehicle", "--trusted-root", tmp_path / "root.json", *extra)
        assert r.exit_code == 2 and f"--repo-url {url!r}" in r.output, r.output
    assert not (tmp_path / "vehicle").exists() and not (tmp_path / "units").exists()


def test_timer_units_are_valid_for_systemd(tmp_path):
    r = invoke("update", "--repo-url", "https://fleet:p%40ss@updates.example/x", "--root", tmp_path / "r",
               "--timer", tmp_path, "--every", "30")
    assert r.exit_code == 0, r.output
    svc, timer = tmp_path / "edgecv-update.service", tmp_path / "edgecv-update.timer"
    assert "OnUnitActiveSec=30min" in timer.read_text() and "p%%40ss" in svc.read_text()
    v = subprocess.run(["systemd-analyze", "verify", str(svc), str(timer)], capture_output=True, text=True,
                       env={**os.environ, "SYSTEMD_LOG_LEVEL": "err"})
    assert v.returncode == 0, v.stderr
    (tmp_path / "a-file").write_text("")
    for where, why in ((tmp_path / "a-file", "is not a folder"), (tmp_path / "no" / "such", "does not exist")):
        r = invoke("update", "--repo-url", "https://updates.example/x", "--timer", where)
        assert r.exit_code == 2 and f"--timer {where}/edgecv-update.service: {where} {why}" in r.output, r.output


@pytest.mark.slow  # a benchmark tool, not the product: python3 -m pytest -m slow (docs/benchmarks.md)
def test_fleet_simulation_small(tmp_path, tiny_bundle, keys):
    """tools/fleet_sim.py at N=3: idle cost, convergence after a publish, and a server killed mid-rollout."""
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "fleet_sim.py"), "--devices", "3", "--bundle",
                        str(signed(tiny_bundle, tmp_path / "b", 1, keys)), "--trust", str(keys / "dev.pub"),
                        "--key", str(keys / "dev.pem"), "--out", str(tmp_path / "sim"), "--json"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "EDGECV_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["bootstrap"]["ok"] == 3, res["bootstrap"]
    assert res["idle"]["requests_per_device_per_poll"] <= 3 and res["idle"]["bundle_downloads"] == 0
    assert res["rollout"]["converged"] == 3
    assert res["server_killed"]["on_valid_slot"] == 3
