"""``edgecv install``, ``rollback``, ``status``: A/B slots on the device, the way in-vehicle updates are done
(UNECE R156; Uptane's install steps).

Layout of an install root::

    ROOT/slots/a/, ROOT/slots/b/   two bundle copies: the active one and the previous one
    ROOT/slots/a.json, b.json      each slot's install report (bundle id, release, every check, timings)
    ROOT/active -> slots/a         the switch: one symlink, replaced atomically (os.replace)
    ROOT/install.json              the highest release ever activated (anti-rollback)
    ROOT/reports/                  every install attempt's report, failed ones included

An install verifies the bundle's signature (when a key is trusted) and checksums before reading anything else,
checks its compatibility with this device and its release number, copies it into the inactive slot, runs
``verify`` there as the acceptance test (golden vectors, engines built in that slot's cache), and only then
switches ``active``. The previous slot is kept. A failure or a kill at any point before the switch leaves the
previous version active and runnable; the switch itself is one atomic rename.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional

from edgecv.errors import BundleError
from edgecv.utils.io import TMP_TAG, atomic_write_json, dir_mode, sweep_stale

STATE = "install.json"
SLOTS = ("a", "b")


class InstallError(BundleError):
    """The bundle cannot be installed (incompatible, older release, failed acceptance); nothing changed."""


def default_root() -> Path:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/edgecv")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "edgecv"


def is_install_root(path: Path) -> bool:
    # The symlink is the truth (install.json may lag it by a kill between the switch and its update).
    return (path / "active").is_symlink() and (path / "slots").is_dir()


def active_slot(path: Path) -> Optional[Path]:
    """The active slot's folder when ``path`` is an install root, else None (``edgecv run ROOT`` works)."""
    if not is_install_root(path):
        return None
    target = os.readlink(path / "active")
    if target not in (f"slots/{s}" for s in SLOTS):
        raise BundleError(f"{path}/active: points to {target!r}, not to a slot")
    return path / target


def _read_json(p: Path) -> Optional[Dict]:
    try:
        d = json.loads(p.read_text())
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def _stage(name: str, log) -> None:
    log(f"[edgecv install] {name} ...")
    if os.environ.get("EDGECV_INSTALL_PAUSE") == name.split()[0]:  # fault-injection hook for the kill tests
        time.sleep(float(os.environ.get("EDGECV_INSTALL_PAUSE_S", "60")))


def check_compatibility(manifest: Dict) -> List[Dict]:
    """Each compatibility check the manifest declares, against this device: [{check, ok, detail}]."""
    from edgecv import __version__

    compat = manifest.get("compat") if isinstance(manifest.get("compat"), dict) else {}
    out = []
    arch = compat.get("arch")
    if arch:
        out.append({"check": "cpu architecture", "ok": platform.machine() in arch,
                    "detail": f"device {platform.machine()}, bundle {', '.join(arch)}"})
    need = compat.get("min_edgecv")
    if need:
        have = tuple(int(x) for x in __version__.split(".")[:3] if x.isdigit())
        want = tuple(int(x) for x in str(need).split(".")[:3] if x.isdigit())
        out.append({"check": "edgecv version", "ok": have >= want, "detail": f"device {__version__}, needs >= {need}"})
    trt_range = compat.get("tensorrt_major")
    if trt_range:
        from edgecv.runtime.trt_compat import trt_version

        v = trt_version()
        if v is not None:
            major = int(v.split(".")[0])
            out.append({"check": "TensorRT major", "ok": trt_range[0] <= major <= trt_range[1],
                        "detail": f"device {v}, bundle {trt_range[0]}..{trt_range[1]}"})
    l4t = compat.get("l4t")
    if l4t:
        have_l4t = _l4t_release()
        if have_l4t is not None:
            out.append({"check": "L4T release", "ok": have_l4t.startswith(str(l4t)),
                        "detail": f"device {have_l4t}, bundle {l4t}"})
    return out


def _l4t_release() -> Optional[str]:
    try:
        head = Path("/etc/nv_tegra_release").read_text().split(",")[0]  # "# R35 (release), REVISION: 4.1"
        return head.replace("#", "").split("(")[0].strip().lstrip("R")
    except OSError:
        return None


def highest_release(root: Path) -> int:
    def as_int(v):
        return v if type(v) is int else -1  # a hand-edited or damaged value counts as nothing

    best = as_int((_read_json(root / STATE) or {}).get("highest_release", -1))
    active = active_slot(root) if is_install_root(root) else None
    if active is not None:
        best = max(best, as_int((_read_json(root / "slots" / f"{active.name}.json") or {}).get("release", -1)))
    return best


def install(bundle: str | os.PathLike, root: Optional[str | os.PathLike] = None, allow_downgrade: bool = False,
            log=print) -> Dict:
    """Install ``bundle`` into the inactive slot of ``root`` and activate it; returns the install report."""
    from edgecv.runtime.bundle import open_bundle
    from edgecv.utils.outputs import OutputLock

    root = Path(os.path.abspath(root or default_root()))
    if root.exists() and (not root.is_dir() or root.is_symlink()):
        raise InstallError(f"{root}: the install root exists and is not a directory")
    if not root.exists():
        open_bundle(bundle)  # a bad bundle creates nothing on the device
    root.mkdir(parents=True, exist_ok=True, mode=0o755)
    os.chmod(root, 0o755)  # readable by the service account, writable by its owner only
    t0 = time.time()
    checks: List[Dict] = []
    report: Dict = {"bundle": os.fspath(bundle), "root": str(root), "checks": checks, "started": t0}
    with OutputLock(root / "install", f"{root} (install root)"):
        if (root / "slots").is_dir():
            sweep_stale(root / "slots")  # a killed install's half copy
        try:
            _stage("verify signature and checksums", log)
            b = open_bundle(bundle)
            m = b.manifest
            from edgecv.deploy.signing import configured_trust

            checks.append({"check": "signature", "ok": True,
                           "detail": "verified with a trusted key" if configured_trust() else "no key trusted here"})
            checks.append({"check": "checksums", "ok": True, "detail": f"{len(m['files'])} files"})
            report.update(bundle_id=m["manifest_sha256"], release=int(m.get("release", 0) or 0))
            for c in check_compatibility(m):
                checks.append(c)
                if not c["ok"]:
                    raise InstallError(f"incompatible with this device: {c['check']} ({c['detail']})")
            floor = highest_release(root)
            ok = report["release"] > floor or allow_downgrade
            checks.append({"check": "release", "ok": ok, "detail": f"bundle {report['release']}, installed "
                           f"{floor if floor >= 0 else 'none'}" + (" (downgrade allowed)" if allow_downgrade
                                                                   and report["release"] <= floor else "")})
            if not ok:
                raise InstallError(f"release {report['release']} is not newer than the installed {floor} "
                                   "(anti-rollback; --allow-downgrade to install it anyway)")
            active = active_slot(root)
            slot = next(s for s in SLOTS if active is None or s != active.name)
            report["slot"] = slot
            _stage(f"copy into slot {slot}", log)
            dest = _copy_into_slot(b, root, slot)
            _stage("acceptance test (edgecv verify)", log)
            from edgecv.runtime.verify import verify

            rep = verify(str(dest), record=True)
            chosen = rep["chosen"]
            checks.append({"check": "acceptance (golden vectors)", "ok": chosen is not None,
                           "detail": "; ".join(f"{c['target']} {c['precision']}: {c['status']}"
                                               for c in rep["candidates"])})
            if chosen is None:
                raise InstallError("acceptance test failed: no precision answers the golden vectors within the "
                                   "bundle's fidelity budget on this device")
            report["chosen"] = chosen
            report.update(status="verified", finished=time.time())
            atomic_write_json(root / "slots" / f"{slot}.json", report)
            _stage("switch", log)
            _switch(root, slot)
            report["previous"] = active.name if active is not None else None
            atomic_write_json(root / STATE, {"format": 1, "active": slot,
                                             "highest_release": max(report["release"], highest_release(root))})
            report.update(status="active", seconds=round(time.time() - t0, 2))
            atomic_write_json(root / "slots" / f"{slot}.json", report)
        except BaseException as e:
            report.update(status="failed", error=str(e) or type(e).__name__, seconds=round(time.time() - t0, 2))
            _save_report(root, report)
            raise
        _save_report(root, report)
    return report


def _copy_into_slot(bundle, root: Path, slot: str) -> Path:
    from edgecv.runtime.bundle import MANIFEST, open_bundle

    slots = root / "slots"
    slots.mkdir(exist_ok=True, mode=dir_mode())
    tmp = slots / f".{slot}{TMP_TAG}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755)
    names = list(bundle.manifest["files"]) + [MANIFEST]
    from edgecv.deploy.signing import SIGNATURE

    if (bundle.root / SIGNATURE).is_file():
        names.append(SIGNATURE)
    for name in names:
        src = bundle.root / name if name in (MANIFEST, SIGNATURE) else bundle.path(name)
        dst = tmp / name
        dst.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)
    open_bundle(tmp)  # the copy itself is verified (and its signature, when trusted)
    dest = slots / slot
    shutil.rmtree(dest, ignore_errors=True)  # the inactive slot: the version before the previous one
    (slots / f"{slot}.json").unlink(missing_ok=True)
    os.rename(tmp, dest)
    return dest


def _switch(root: Path, slot: str) -> None:
    """Point ``active`` at ``slot`` with one atomic rename; the other slot's report becomes the previous one."""
    link = root / f".active{TMP_TAG}{os.getpid()}"
    link.unlink(missing_ok=True)
    os.symlink(f"slots/{slot}", link)
    os.replace(link, root / "active")
    for other in SLOTS:
        rep = _read_json(root / "slots" / f"{other}.json")
        if rep is not None:
            want = "active" if other == slot else "previous"
            if rep.get("status") != want:
                atomic_write_json(root / "slots" / f"{other}.json", {**rep, "status": want})


def _save_report(root: Path, report: Dict) -> None:
    import uuid

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(report["started"]))
    atomic_write_json(root / "reports" / f"{stamp}-{uuid.uuid4().hex[:8]}-{report['status']}.json", report)


def rollback(root: Optional[str | os.PathLike] = None) -> Dict:
    """Make the previous slot active again (it must hold a bundle that passed its acceptance test)."""
    from edgecv.runtime.bundle import open_bundle
    from edgecv.utils.outputs import OutputLock

    root = Path(os.path.abspath(root or default_root()))
    if not is_install_root(root):
        raise InstallError(f"{root}: not an edgecv install root (nothing installed)")
    with OutputLock(root / "install", f"{root} (install root)"):
        active = active_slot(root)
        other = next(s for s in SLOTS if s != active.name)
        rep = _read_json(root / "slots" / f"{other}.json")
        if not (root / "slots" / other).is_dir() or not rep or rep.get("status") not in ("verified", "previous"):
            raise InstallError(f"{root}: no previous version to roll back to")
        open_bundle(root / "slots" / other)  # still intact (and still trusted)
        _switch(root, other)
        state = _read_json(root / STATE) or {}
        atomic_write_json(root / STATE, {**state, "active": other})
        return {"active": other, "previous": active.name, "release": rep.get("release"),
                "bundle_id": rep.get("bundle_id")}


def status(root: Optional[str | os.PathLike] = None) -> Dict:
    """Active and previous slots with their install reports."""
    root = Path(os.path.abspath(root or default_root()))
    if not is_install_root(root):
        raise InstallError(f"{root}: not an edgecv install root (nothing installed)")
    active = active_slot(root)
    other = next(s for s in SLOTS if s != active.name)
    prev = _read_json(root / "slots" / f"{other}.json")
    return {"root": str(root), "highest_release": highest_release(root),
            "active": {"slot": active.name, **(_read_json(root / "slots" / f"{active.name}.json") or {})},
            "previous": {"slot": other, **prev} if prev and (root / "slots" / other).is_dir() else None}
