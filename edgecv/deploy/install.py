"""``edgecv install``, ``rollback``, ``status``: A/B slots on the device, the way in-vehicle updates are done
(UNECE R156; Uptane's install steps).

The install root's layout and state are edgecv.bundle.slots'. The rules (docs/guarantees.md):

- The bundle is checked (signature, checksums, golden vectors) before the root is touched. A root is new, empty
  or an install root (nothing but the names above); an existing folder's mode is never changed.
- The state file is written atomically and read strictly: a damaged one refuses installs and rollbacks, naming
  it, rather than resetting the anti-rollback floor.
- A bundle is copied and accepted (``verify`` with its golden vectors) in a staging folder; the inactive slot is
  replaced only after that, so a failed install leaves both the active and the previous version in place.
- A switch is recorded as pending before the symlink moves and as done after it; whatever a kill leaves is
  reconciled with the symlink, the one truth. "previous" is only ever a slot that was active before.
"""
from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional

from edgecv.bundle.slots import (
    ROOT_NAMES,
    SLOTS,
    STALE_UPLOAD_S,
    STATE,
    UPLOAD_PREFIX,
    InstallState,
    current_state,
    finished,
    is_install_root,
    point_active,
    previous_problem,
    read_json,
    with_pending,
    write_state,
)
from edgecv.errors import InstallError, NoRoomError
from edgecv.utils.io import TMP_TAG, atomic_write_json, sweep_stale
from edgecv.utils.versions import version_tuple


def default_root() -> Path:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/edgecv")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "edgecv"



# -- checks -------------------------------------------------------------------------------------------------------

def _stage(name: str, log) -> None:
    log(f"[edgecv install] {name} ...")
    if os.environ.get("EDGECV_INSTALL_PAUSE") == name.split()[0]:  # fault-injection hook for the kill tests
        end = time.monotonic() + float(os.environ.get("EDGECV_INSTALL_PAUSE_S", "60"))
        while time.monotonic() < end:  # short steps: SIGTERM is raised between them (utils.signals)
            time.sleep(0.1)


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
        out.append({"check": "edgecv version", "ok": version_tuple(__version__) >= version_tuple(need),
                    "detail": f"device {__version__}, needs >= {need}"})
    trt_range = compat.get("tensorrt_major")
    if trt_range:
        from edgecv.runtime.tensorrt.compat import supported, trt_version

        v = trt_version()
        if v is not None:
            major = version_tuple(v)[0]
            out.append({"check": "TensorRT major", "ok": trt_range[0] <= major <= trt_range[1] and supported(v),
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
    """The anti-rollback floor: the highest release ever activated in ``root`` (-1: none)."""
    return current_state(root).highest_release


def prepare_root(root: Path) -> None:
    """Make ``root`` if it is new; accept it if it is empty or an install root; refuse anything else, changing
    nothing (a typo like ``--root /tmp`` must not touch /tmp)."""
    if os.path.lexists(root):
        if root.is_symlink() or not root.is_dir():
            raise InstallError(f"{root}: the install root exists and is not a directory"
                               + (" (a symbolic link: give the folder itself)" if root.is_symlink() else ""))
        try:
            entries = os.listdir(root)
        except OSError as e:
            raise InstallError(f"{root}: cannot list the install root ({e.strerror})") from None
        foreign = sorted(e for e in entries if e not in ROOT_NAMES and TMP_TAG not in e
                         and not e.startswith(UPLOAD_PREFIX))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise InstallError(f"{root}: is not empty and not an edgecv install root (it holds {shown}); "
                               "edgecv never writes beside other files: choose a new or empty folder")
        return
    anc = root.parent
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise InstallError(f"{root}: cannot be created ({anc} is not a directory)")
    root.mkdir(parents=True, mode=0o755)
    os.chmod(root, 0o755)  # the folder made here: readable by the service account, writable by its owner only


# -- install --------------------------------------------------------------------------------------------------------

def install(bundle: str | os.PathLike, root: Optional[str | os.PathLike] = None, allow_downgrade: bool = False,
            log=print, source: Optional[str] = None) -> Dict:
    """Install ``bundle`` into the inactive slot of ``root`` and activate it; returns the install report
    (``source``: where the bundle came from, for the report, when ``bundle`` is a temporary copy)."""
    from edgecv.bundle.reader import open_bundle
    from edgecv.utils.outputs import OutputLock

    root = Path(os.path.abspath(root or default_root()))
    _stage("verify signature and checksums", log)
    b = open_bundle(bundle)  # before the root is touched: a bad bundle changes nothing on the device
    if not isinstance(b.manifest.get("golden"), dict):
        raise InstallError(f"{b.root}: has no golden vectors, so it cannot be accepted on the device; export it "
                           "again with this edgecv")
    inside = Path(os.path.realpath(root))
    if inside == Path(os.path.realpath(b.root)) or Path(os.path.realpath(b.root)) in inside.parents:
        raise InstallError(f"{root}: the install root is inside the bundle {b.root}; files added there would "
                           "break the bundle's signature: choose a folder outside it")
    prepare_root(root)
    t0 = time.time()
    report: Dict = {"bundle": source or os.fsdecode(bundle), "root": str(root), "checks": [], "started": t0,
                    "bundle_id": b.manifest["manifest_sha256"], "release": int(b.manifest.get("release", 0) or 0)}
    with OutputLock(root / "install", f"{root} (install root)"):
        try:
            _install_locked(b, root, report, allow_downgrade, log)
        except BaseException as e:
            report.update(status="failed", error=str(e) or type(e).__name__, seconds=round(time.time() - t0, 2))
            _save_report(root, report, log)
            raise
        report.update(status="active", seconds=round(time.time() - t0, 2))
        _save_report(root, report, log)
    return report


def _install_locked(b, root: Path, report: Dict, allow_downgrade: bool, log) -> None:
    checks = report["checks"]
    st = current_state(root)  # a damaged state refuses the install before anything changes
    if not (root / STATE).exists():
        write_state(root, st)
    checks.append({"check": "signature", "ok": True, "detail": f"verified with {b.signed_by}" if b.signed_by
                   else "not checked: no key is trusted on this device"})
    checks.append({"check": "checksums", "ok": True, "detail": f"{len(b.manifest['files'])} files"})
    for c in check_compatibility(b.manifest):
        checks.append(c)
        if not c["ok"]:
            raise InstallError(f"incompatible with this device: {c['check']} ({c['detail']})")
    floor, rel = st.highest_release, report["release"]
    ok = rel > floor or allow_downgrade
    checks.append({"check": "release", "ok": ok, "detail": f"bundle {rel}, installed {floor if floor >= 0 else 'none'}"
                   + (" (downgrade allowed)" if allow_downgrade and rel <= floor else "")})
    if not ok:
        raise InstallError(f"release {rel} is not newer than the installed {floor} "
                           "(anti-rollback; --allow-downgrade to install it anyway)")
    slot = next(s for s in SLOTS if s != st.active)
    report["slot"] = slot
    (root / "slots").mkdir(exist_ok=True, mode=0o755)
    sweep_stale(root / "slots")  # a killed install's staging
    report["stale_uploads_removed"] = sweep_stale_uploads(root, keep=Path(b.root))
    _stage(f"copy into slot {slot} (staged)", log)
    staged = _stage_copy(b, root, slot)
    try:
        _stage("acceptance test (edgecv verify)", log)
        report["chosen"] = _accept(staged, checks)
        _stage("switch", log)
        _switch_to(root, st, {"slot": slot, "kind": "install", "bundle_id": report["bundle_id"], "release": rel},
                   staged, report, log)
        report["previous"] = st.active
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def sweep_stale_uploads(root: Path, keep: Path, now: Optional[float] = None) -> List[str]:
    """Remove the upload folders of pushes that never finished (a lost connection, a killed ``push``): those in
    which nothing changed for ``STALE_UPLOAD_S``. A push still copying changes its folder; ``keep`` (the bundle being
    installed) is never removed. Returns the names removed."""
    now = time.time() if now is None else now
    removed = []
    for e in sorted(os.listdir(root)):
        p = root / e
        if not e.startswith(UPLOAD_PREFIX) or p.is_symlink() or not p.is_dir() or os.path.realpath(p) == \
                os.path.realpath(keep):
            continue
        try:
            stale = now - _newest_change(p) > STALE_UPLOAD_S
        except OSError:  # removed meanwhile (its push cleaning up after a refused install): nothing to sweep
            continue
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(e)
    return removed


def _newest_change(folder: Path) -> float:
    """The latest modification time of ``folder`` or anything in it (not following links)."""
    newest = os.lstat(folder).st_mtime
    for base, dirs, files in os.walk(folder):
        for n in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(base, n)).st_mtime)
            except OSError:
                continue
    return newest


def _stage_copy(b, root: Path, slot: str) -> Path:
    """A verified copy of the bundle beside the slots (the slots are untouched until it is accepted)."""
    from edgecv.bundle.names import MANIFEST, SIGNATURE
    from edgecv.bundle.reader import open_bundle

    names = list(b.manifest["files"]) + [MANIFEST] + ([SIGNATURE] if (b.root / SIGNATURE).is_file() else [])
    sources = [b.root / n if n in (MANIFEST, SIGNATURE) else b.path(n) for n in names]
    _check_space(root, sum(src.stat().st_size for src in sources), slot)
    tmp = root / "slots" / f".{slot}{TMP_TAG}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755)
    try:
        for name, src in zip(names, sources):
            dst = tmp / name
            dst.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o644)
        open_bundle(tmp)  # the copy itself is verified (and its signature, when trusted)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed copy must not leave the vehicle's disk fuller
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise InstallError(f"{root}: cannot copy the bundle into slot {slot} ({e.strerror}); the copy was "
                               "removed and the active slot is untouched") from None
        raise
    return tmp


def _check_space(root: Path, need: int, slot: str) -> None:
    """Refuse before copying when the install root's file system cannot hold the bundle."""
    free = shutil.disk_usage(root).free
    if need > free:
        raise NoRoomError(f"{root}: slot {slot} needs {need / 2**20:.1f} MiB for the bundle and the file system has "
                           f"{free / 2**20:.1f} MiB free; nothing was copied and the active slot is untouched")


def _accept(staged: Path, checks: List[Dict]) -> Dict:
    from edgecv.runtime.acceptance.verify import verify

    rep = verify(str(staged), record=True)
    chosen = rep["chosen"]
    checks.append({"check": "acceptance (golden vectors)", "ok": chosen is not None,
                   "detail": "; ".join(f"{c['target']} {c['precision']}: {c['status']}" for c in rep["candidates"])})
    if chosen is None:
        raise InstallError("acceptance test failed: no precision answers the golden vectors within the "
                           "bundle's fidelity budget on this device")
    return chosen


def _switch_to(root: Path, st: InstallState, pending: Dict, staged: Optional[Path], report: Optional[Dict],
               log) -> None:
    """Record the switch as pending, put the staged bundle in its slot (an install), move the link, record the
    switch as done. A failure after the link moved moves it back, so what is active is what the state says."""
    slot = pending["slot"]
    write_state(root, InstallState(active=st.active, previous=None if st.previous == slot else st.previous,
                                    highest_release=st.highest_release, held=st.held, pending=pending))
    if staged is not None:  # the slot's old content (the version before the previous one, or none) goes now
        shutil.rmtree(root / "slots" / slot, ignore_errors=True)
        os.rename(staged, root / "slots" / slot)
        atomic_write_json(root / "slots" / f"{slot}.json", {**report, "status": "verified"})
    _stage(f"link slots/{slot} as active", log)
    point_active(root, slot)
    try:
        _stage("record the switch", log)
        write_state(root, finished(with_pending(st, pending)))
    except BaseException:
        if st.active is not None:
            point_active(root, st.active)
        else:
            (root / "active").unlink()
        raise
    for s, status in ((slot, "active"), (st.active, "previous")):
        rep = read_json(root / "slots" / f"{s}.json") if s else None
        if rep is not None:
            try:
                atomic_write_json(root / "slots" / f"{s}.json", {**rep, "status": status})
            except OSError:
                pass  # the slot reports are records; install.json is the state


def _save_report(root: Path, report: Dict, log) -> None:
    """Every attempt's report in ROOT/reports; best effort: a full disk must not turn a done install into a
    failed one, nor hide why an install failed."""
    import uuid

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(report["started"]))
    try:
        atomic_write_json(root / "reports" / f"{stamp}-{uuid.uuid4().hex[:8]}-{report['status']}.json", report)
    except OSError as e:
        log(f"[edgecv install] warning: the report was not saved ({e.strerror or e})")


# -- rollback and status ------------------------------------------------------------------------------------------

def _existing_root(root) -> Path:
    root = Path(os.path.abspath(root or default_root()))
    if not is_install_root(root):
        raise InstallError(f"{root}: not an edgecv install root (nothing installed)")
    return root


def rollback(root: Optional[str | os.PathLike] = None, log=lambda s: None) -> Dict:
    """Make the previously active slot active again (checksums and trust are checked again first)."""
    from edgecv.bundle.reader import open_bundle
    from edgecv.utils.outputs import OutputLock

    root = _existing_root(root)
    with OutputLock(root / "install", f"{root} (install root)"):
        st = current_state(root)
        why = previous_problem(root, st)
        if why:
            raise InstallError(f"{root}: {why}")
        prev = st.previous
        b = open_bundle(root / "slots" / prev)  # still intact (and still trusted)
        if b.manifest["manifest_sha256"] != st.held[prev]["bundle_id"]:
            raise InstallError(f"{root}: slot {prev} no longer holds the version that was active before")
        _switch_to(root, st, {"slot": prev, "kind": "rollback", **st.held[prev]}, None, None, log)
        return {"active": prev, "previous": st.active, "release": st.held[prev]["release"],
                "bundle_id": st.held[prev]["bundle_id"]}


def status(root: Optional[str | os.PathLike] = None) -> Dict:
    """Active and previous slots with their install reports (previous: only a slot that was active before and
    still holds what it held then)."""
    root = _existing_root(root)
    st = current_state(root)

    def slot(s: str) -> Dict:
        return {**(read_json(root / "slots" / f"{s}.json") or {}), "slot": s, **st.held.get(s, {})}

    return {"root": str(root), "highest_release": st.highest_release,
            "active": slot(st.active) if st.active else None,
            "previous": None if previous_problem(root, st) else slot(st.previous)}
