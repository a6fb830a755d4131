"""``edgecv install``, ``rollback``, ``status``: A/B slots on the device, the way in-vehicle updates are done
(UNECE R156; Uptane's install steps).

Layout of an install root::

    ROOT/install.json              the state: active and previous slot, what each held, the highest release
                                   ever activated (anti-rollback), and a switch in progress
    ROOT/slots/a/, ROOT/slots/b/   two bundle copies: the active one and the previous one
    ROOT/slots/a.json, b.json      each slot's install report (bundle id, release, every check, timings)
    ROOT/active -> slots/a         the switch: one symlink, replaced atomically (os.replace)
    ROOT/reports/                  every install attempt's report, failed ones included

The rules (the README's "What edgecv guarantees"):

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

import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from edgecv.errors import BundleError
from edgecv.utils.io import TMP_TAG, atomic_write_json, sweep_stale

STATE = "install.json"
STATE_FORMAT = 2
SLOTS = ("a", "b")
LOCK = ".install.edgecv-lock"  # OutputLock(root / "install")
ROOT_NAMES = ("slots", "active", STATE, "reports", LOCK)  # all an install root holds (and temporaries)


class InstallError(BundleError):
    """The bundle cannot be installed (incompatible, older release, failed acceptance); nothing changed."""


class InstallStateError(InstallError):
    """An install root's state is damaged or inconsistent: installs and rollbacks are refused until it is fixed."""


def default_root() -> Path:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/edgecv")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "edgecv"


def is_install_root(path: Path) -> bool:
    return (path / "active").is_symlink() and (path / "slots").is_dir()


def _link_slot(root: Path) -> Optional[str]:
    """The slot ``ROOT/active`` points to, None when there is no link; InstallStateError for anything else."""
    link = root / "active"
    if not link.is_symlink():
        if os.path.lexists(link):
            raise InstallStateError(f"{link}: is not a symbolic link to a slot")
        return None
    target = os.readlink(link)
    if target not in (f"slots/{s}" for s in SLOTS):
        raise InstallStateError(f"{link}: points to {target!r}, not to a slot")
    return target.split("/")[1]


def active_slot(path: Path) -> Optional[Path]:
    """The active slot's folder when ``path`` is an install root, else None (``edgecv run ROOT`` works)."""
    if not is_install_root(path):
        return None
    try:
        slot = _link_slot(path)
    except InstallStateError as e:
        raise BundleError(str(e)) from None
    return path / "slots" / slot if slot else None


# -- the state file ------------------------------------------------------------------------------------------------

@dataclass
class InstallState:
    """What ``install.json`` records. ``held``: what each slot held when it was last made active (bundle id,
    release); ``pending``: a switch begun and not yet recorded as done (``{slot, bundle_id, release, kind}``)."""

    active: Optional[str] = None
    previous: Optional[str] = None
    highest_release: int = -1
    held: Dict[str, Dict] = field(default_factory=dict)
    pending: Optional[Dict] = None

    def to_json(self) -> Dict:
        return {"format": STATE_FORMAT, **asdict(self)}


def _bad(root: Path, why: str) -> InstallStateError:
    return InstallStateError(f"{root / STATE}: {why}; installs and rollbacks are refused until it is restored "
                             "(the anti-rollback floor cannot be known from a damaged state)")


def _slot_info(v, root: Path, where: str) -> Dict:
    if not isinstance(v, dict) or not isinstance(v.get("bundle_id"), str) or type(v.get("release")) is not int \
            or v["release"] < 0:
        raise _bad(root, f"{where}: expected {{bundle_id: str, release: int >= 0}}, got {v!r}")
    return v


def _parse_state(d, root: Path) -> InstallState:
    if not isinstance(d, dict):
        raise _bad(root, f"expected a JSON object, got {type(d).__name__}")
    if d.get("format") == 1:  # written by edgecv before the pending switch and the held bundles were recorded
        return _legacy_state(d, root)
    if d.get("format") != STATE_FORMAT:
        raise _bad(root, f"unknown format {d.get('format')!r}")
    st = InstallState()
    for key in ("active", "previous"):
        if d.get(key) not in (None, *SLOTS):
            raise _bad(root, f"{key}: expected a slot ({', '.join(SLOTS)}) or null, got {d.get(key)!r}")
        setattr(st, key, d.get(key))
    hr = d.get("highest_release")
    if type(hr) is not int or hr < -1:
        raise _bad(root, f"highest_release: expected an integer >= -1, got {hr!r}")
    st.highest_release = hr
    held = d.get("held")
    if not isinstance(held, dict) or any(k not in SLOTS for k in held):
        raise _bad(root, f"held: expected {{slot: {{bundle_id, release}}}}, got {held!r}")
    st.held = {k: _slot_info(v, root, f"held.{k}") for k, v in held.items()}
    p = d.get("pending")
    if p is not None:
        if not isinstance(p, dict) or p.get("slot") not in SLOTS or p.get("kind") not in ("install", "rollback"):
            raise _bad(root, f"pending: expected {{slot, kind, bundle_id, release}} or null, got {p!r}")
        st.pending = {**_slot_info(p, root, "pending"), "slot": p["slot"], "kind": p["kind"]}
    for key in ("active", "previous"):
        slot = getattr(st, key)
        if slot is not None and slot not in st.held:
            raise _bad(root, f"{key}: slot {slot} is not among the held slots")
    return st


def _legacy_state(d, root: Path) -> InstallState:
    hr, active = d.get("highest_release"), d.get("active")
    if type(hr) is not int or hr < -1 or active not in SLOTS:
        raise _bad(root, "format 1: expected {active: slot, highest_release: int}")
    st = InstallState(active=active, highest_release=hr)
    for s in SLOTS:
        rep = _read_json(root / "slots" / f"{s}.json") or {}
        if isinstance(rep.get("bundle_id"), str) and type(rep.get("release")) is int:
            st.held[s] = {"bundle_id": rep["bundle_id"], "release": rep["release"]}
            if s != active and rep.get("status") == "previous":
                st.previous = s
    if active not in st.held:
        raise _bad(root, f"format 1: the active slot {active}'s report does not say what it holds")
    return st


def read_state(root: Path) -> Optional[InstallState]:
    """The state as written (None when there is no state file); InstallStateError when it is damaged."""
    p = root / STATE
    if not os.path.lexists(p):
        return None
    if p.is_symlink() or not p.is_file():
        raise _bad(root, "is not a regular file")
    try:
        from edgecv.runtime.bundle import strict_json

        return _parse_state(strict_json(p.read_bytes(), str(p)), root)
    except (OSError, ValueError) as e:
        if isinstance(e, InstallStateError):
            raise
        raise _bad(root, f"unreadable ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None


def current_state(root: Path) -> InstallState:
    """The state reconciled with the ``active`` symlink (the truth where a kill came between the two)."""
    if os.path.lexists(root / "slots") and (root / "slots").is_symlink() or \
            (root / "slots").exists() and not (root / "slots").is_dir():
        raise _bad(root, f"{root / 'slots'} is not a folder")
    st = read_state(root)
    link = _link_slot(root)
    if st is None:
        if link is not None:
            raise _bad(root, f"missing, while {root / 'active'} points to slot {link}")
        return InstallState()
    p = st.pending
    if p is not None and link == p["slot"] and link != st.active:
        st = _finished(st)  # the switch happened; the kill came before it was recorded
    elif p is not None and link == st.active:
        st.pending = None  # the switch never happened: the staged slot was never active
    elif p is not None:
        raise _bad(root, f"a switch to slot {p['slot']} is pending, yet {root / 'active'} points to {link}")
    if link != st.active:
        raise _bad(root, f"says slot {st.active} is active, yet {root / 'active'} points to {link}")
    return st


def _finished(st: InstallState) -> InstallState:
    """The state after the pending switch."""
    p = st.pending
    held = dict(st.held)
    if p["kind"] == "install":
        held[p["slot"]] = {"bundle_id": p["bundle_id"], "release": p["release"]}
    return InstallState(active=p["slot"], previous=st.active, held=held, pending=None,
                        highest_release=max(st.highest_release, p["release"]))


def _write_state(root: Path, st: InstallState) -> None:
    atomic_write_json(root / STATE, st.to_json())


def _read_json(p: Path) -> Optional[Dict]:
    try:
        d = json.loads(p.read_text())
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


# -- checks -------------------------------------------------------------------------------------------------------

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
    """The anti-rollback floor: the highest release ever activated in ``root`` (-1: none)."""
    return current_state(root).highest_release


def _prepare_root(root: Path) -> None:
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
                         and not e.startswith(".incoming-"))  # edgecv push's upload, removed after the install
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
            log=print) -> Dict:
    """Install ``bundle`` into the inactive slot of ``root`` and activate it; returns the install report."""
    from edgecv.runtime.bundle import open_bundle
    from edgecv.utils.outputs import OutputLock

    root = Path(os.path.abspath(root or default_root()))
    _stage("verify signature and checksums", log)
    b = open_bundle(bundle)  # before the root is touched: a bad bundle changes nothing on the device
    if not isinstance(b.manifest.get("golden"), dict):
        raise InstallError(f"{b.root}: has no golden vectors, so it cannot be accepted on the device; export it "
                           "again with this edgecv")
    _prepare_root(root)
    t0 = time.time()
    report: Dict = {"bundle": os.fsdecode(bundle), "root": str(root), "checks": [], "started": t0,
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
        _write_state(root, st)
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


def _stage_copy(b, root: Path, slot: str) -> Path:
    """A verified copy of the bundle beside the slots (the slots are untouched until it is accepted)."""
    from edgecv.deploy.signing import SIGNATURE
    from edgecv.runtime.bundle import MANIFEST, open_bundle

    tmp = root / "slots" / f".{slot}{TMP_TAG}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755)
    names = list(b.manifest["files"]) + [MANIFEST] + ([SIGNATURE] if (b.root / SIGNATURE).is_file() else [])
    for name in names:
        src = b.root / name if name in (MANIFEST, SIGNATURE) else b.path(name)
        dst = tmp / name
        dst.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)
    open_bundle(tmp)  # the copy itself is verified (and its signature, when trusted)
    return tmp


def _accept(staged: Path, checks: List[Dict]) -> Dict:
    from edgecv.runtime.verify import verify

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
    _write_state(root, InstallState(active=st.active, previous=None if st.previous == slot else st.previous,
                                    highest_release=st.highest_release, held=st.held, pending=pending))
    if staged is not None:  # the slot's old content (the version before the previous one, or none) goes now
        shutil.rmtree(root / "slots" / slot, ignore_errors=True)
        os.rename(staged, root / "slots" / slot)
        atomic_write_json(root / "slots" / f"{slot}.json", {**report, "status": "verified"})
    _stage(f"link slots/{slot} as active", log)
    _point_active(root, slot)
    try:
        _stage("record the switch", log)
        _write_state(root, _finished(_with_pending(st, pending)))
    except BaseException:
        if st.active is not None:
            _point_active(root, st.active)
        else:
            (root / "active").unlink()
        raise
    for s, status in ((slot, "active"), (st.active, "previous")):
        rep = _read_json(root / "slots" / f"{s}.json") if s else None
        if rep is not None:
            try:
                atomic_write_json(root / "slots" / f"{s}.json", {**rep, "status": status})
            except OSError:
                pass  # the slot reports are records; install.json is the state


def _with_pending(st: InstallState, pending: Dict) -> InstallState:
    return InstallState(st.active, st.previous, st.highest_release, dict(st.held), pending)


def _point_active(root: Path, slot: str) -> None:
    link = root / f".active{TMP_TAG}{os.getpid()}"
    link.unlink(missing_ok=True)
    os.symlink(f"slots/{slot}", link)
    os.replace(link, root / "active")


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


def _previous_problem(root: Path, st: InstallState) -> Optional[str]:
    """Why the previous slot cannot be rolled back to (None: it holds the bundle that was active before)."""
    if st.previous is None:
        return "no previous version to roll back to"
    m = _read_json(root / "slots" / st.previous / "manifest.json")
    if m is None or m.get("manifest_sha256") != st.held[st.previous]["bundle_id"]:
        return f"slot {st.previous} no longer holds the version that was active before"
    return None


def rollback(root: Optional[str | os.PathLike] = None, log=lambda s: None) -> Dict:
    """Make the previously active slot active again (checksums and trust are checked again first)."""
    from edgecv.runtime.bundle import open_bundle
    from edgecv.utils.outputs import OutputLock

    root = _existing_root(root)
    with OutputLock(root / "install", f"{root} (install root)"):
        st = current_state(root)
        why = _previous_problem(root, st)
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
        return {**(_read_json(root / "slots" / f"{s}.json") or {}), "slot": s, **st.held.get(s, {})}

    return {"root": str(root), "highest_release": st.highest_release,
            "active": slot(st.active) if st.active else None,
            "previous": None if _previous_problem(root, st) else slot(st.previous)}
