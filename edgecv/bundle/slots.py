"""An install root's layout and state: the one owner of what ``edgecv install`` writes on a device.

Layout::

    ROOT/install.json              the state: active and previous slot, what each held, the highest release
                                   ever activated (anti-rollback), and a switch in progress
    ROOT/slots/a/, ROOT/slots/b/   two bundle copies: the active one and the previous one
    ROOT/slots/a.json, b.json      each slot's install report (bundle id, release, every check, timings)
    ROOT/active -> slots/a         the switch: one symlink, replaced atomically (os.replace)
    ROOT/reports/                  every install attempt's report, failed ones included

The state file is read strictly (a damaged one is an InstallStateError naming it, never a reset of the
anti-rollback floor) and reconciled with the ``active`` link, the one truth where a kill came between the two.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional

from edgecv.bundle.manifest import strict_json
from edgecv.bundle.names import MANIFEST
from edgecv.errors import BundleError, InstallStateError
from edgecv.utils.io import TMP_TAG, atomic_write_json

STATE = "install.json"
STATE_FORMAT = 2
SLOTS = ("a", "b")
LOCK = ".install.edgecv-lock"  # OutputLock(root / "install")
# all an install root holds (and temporaries): ``tuf`` is edgecv update's trusted metadata and downloads
ROOT_NAMES = ("slots", "active", STATE, "reports", LOCK, "tuf", ".update.edgecv-lock")
# edgecv push's upload folder in the root (``.incoming-<random>``), removed after the install; one a lost connection
# or a killed push left behind is swept by the next install once nothing in it has changed for STALE_UPLOAD_S
UPLOAD_PREFIX = ".incoming-"
STALE_UPLOAD_S = 24 * 3600


def is_install_root(path: Path) -> bool:
    return (path / "active").is_symlink() and (path / "slots").is_dir()


def link_slot(root: Path) -> Optional[str]:
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
        slot = link_slot(path)
    except InstallStateError as e:
        raise BundleError(str(e)) from None
    return path / "slots" / slot if slot else None


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
        rep = read_json(root / "slots" / f"{s}.json") or {}
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
    link = link_slot(root)
    if st is None:
        if link is not None:
            raise _bad(root, f"missing, while {root / 'active'} points to slot {link}")
        return InstallState()
    p = st.pending
    if p is not None and link == p["slot"] and link != st.active:
        st = finished(st)  # the switch happened; the kill came before it was recorded
    elif p is not None and link == st.active:
        st.pending = None  # the switch never happened: the staged slot was never active
    elif p is not None:
        raise _bad(root, f"a switch to slot {p['slot']} is pending, yet {root / 'active'} points to {link}")
    if link != st.active:
        raise _bad(root, f"says slot {st.active} is active, yet {root / 'active'} points to {link}")
    return st


def finished(st: InstallState) -> InstallState:
    """The state after the pending switch."""
    p = st.pending
    held = dict(st.held)
    if p["kind"] == "install":
        held[p["slot"]] = {"bundle_id": p["bundle_id"], "release": p["release"]}
    return InstallState(active=p["slot"], previous=st.active, held=held, pending=None,
                        highest_release=max(st.highest_release, p["release"]))


def with_pending(st: InstallState, pending: Dict) -> InstallState:
    return InstallState(st.active, st.previous, st.highest_release, dict(st.held), pending)


def write_state(root: Path, st: InstallState) -> None:
    atomic_write_json(root / STATE, st.to_json())


def read_json(p: Path) -> Optional[Dict]:
    try:
        d = json.loads(p.read_text())
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def point_active(root: Path, slot: str) -> None:
    link = root / f".active{TMP_TAG}{os.getpid()}"
    link.unlink(missing_ok=True)
    os.symlink(f"slots/{slot}", link)
    os.replace(link, root / "active")


def previous_problem(root: Path, st: InstallState) -> Optional[str]:
    """Why the previous slot cannot be rolled back to (None: it holds the bundle that was active before)."""
    if st.previous is None:
        return "no previous version to roll back to"
    m = read_json(root / "slots" / st.previous / MANIFEST)
    if m is None or m.get("manifest_sha256") != st.held[st.previous]["bundle_id"]:
        return f"slot {st.previous} no longer holds the version that was active before"
    return None
