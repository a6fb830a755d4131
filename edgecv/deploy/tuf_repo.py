"""``edgecv publish`` and ``edgecv repo``: signed releases in a TUF repository that any static web server or CDN
can serve, for a fleet that pulls them (``edgecv update``, edgecv.deploy.update).

The repository is The Update Framework's metadata (python-tuf's ``tuf.api.metadata``), laid out as static files::

    REPO/metadata/1.root.json ...            root, one file per version (a client walks the rotations)
    REPO/metadata/timestamp.json             the entry point, re-signed at least daily (freeze attacks)
    REPO/metadata/N.snapshot.json            every targets metadata version (mix-and-match attacks)
    REPO/metadata/N.targets.json             delegates each channel to its own role and key
    REPO/metadata/N.stable.json, N.canary.json   a channel: its releases and its index
    REPO/targets/stable/<sha256>.<name>.tar  a signed bundle, packed (edgecv.bundle.archive), named by its hash
    REPO/targets/stable/<sha256>.index.json  the channel's releases with their compatibility fields

Keys live in a folder of their own, never inside the served tree (default: ``REPO.keys`` beside it): one Ed25519 key
per role (root, targets, snapshot, timestamp, and each channel). Only ``repo init`` and ``repo rotate`` need the
root key, so it can be kept offline: move ``root.pem`` away after ``init`` (docs/deploy.md).

Every file is written atomically, and ``timestamp.json`` last, so a client always sees one consistent repository
state. Every writer (publish, rotate, timestamp) holds the repository's lock, waiting for another to finish: each
reads the latest version of a metadata file and writes the next, so a timer's ``repo timestamp`` during a publish
would write the same timestamp version again, pointing back at the older snapshot (the release hidden, and every
vehicle that saw the newer snapshot refusing the repository as a rollback).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from edgecv.errors import UsageError
from edgecv.utils.io import atomic_write_bytes, read_small

TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
CHANNELS = ("stable", "canary")
# How long each role's metadata stays valid: the timestamp must be re-signed within a day (edgecv repo timestamp,
# from a timer) or every vehicle refuses the repository as frozen.
EXPIRY_DAYS = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1, "channel": 90}
LOCK_WAIT_S = 600.0  # a publish packs and hashes a bundle: seconds to minutes


class RepoError(UsageError):
    """The repository or its keys cannot be used as asked (not a repository, a key missing, a release not newer)."""


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@dataclass
class RepoPaths:
    repo: Path
    keys: Path

    @classmethod
    def of(cls, repo, keys=None) -> "RepoPaths":
        repo = Path(os.path.abspath(os.fsdecode(repo)))
        return cls(repo, Path(os.path.abspath(os.fsdecode(keys))) if keys else repo.with_name(repo.name + ".keys"))

    @property
    def metadata(self) -> Path:
        return self.repo / "metadata"

    @property
    def targets(self) -> Path:
        return self.repo / "targets"


# -- keys ----------------------------------------------------------------------------------------------------------

def _new_key(paths: RepoPaths, role: str):
    """A new Ed25519 signer for ``role``, its private key written to the keys folder (0600)."""
    from securesystemslib.signer import CryptoSigner

    signer = CryptoSigner.generate_ed25519()
    paths.keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    p = paths.keys / f"{role}.pem"
    atomic_write_bytes(p, signer.private_bytes, mode=0o600)  # mkstemp's 0600 from the first byte to the rename
    return signer


def load_signer(paths: RepoPaths, role: str):
    """The signer of ``role`` from the keys folder; RepoError naming the file when it is missing, unreadable, or
    not a key the repository trusts for ``role``: metadata signed by it would be refused by every vehicle, after
    ``publish`` had said "published"."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner, SSlibKey

    p = paths.keys / f"{role}.pem"
    try:
        priv = load_pem_private_key(read_small(p), password=None)
    except FileNotFoundError:
        revoked = sorted(paths.keys.glob(f"{role}.pem.revoked-*"))
        raise RepoError(f"{p}: the {role} key is not here (the root key is needed only for `edgecv repo init` and "
                        "`edgecv repo rotate`; bring it back from where it is kept offline" +
                        (f"; {revoked[-1].name} is there: a `repo rotate` interrupted before it wrote the new key "
                         "leaves the old one under that name" if revoked else "") + ")") from None
    except (OSError, ValueError, TypeError) as e:
        raise RepoError(f"{p}: cannot read the {role} key ({e})") from None
    key = SSlibKey.from_crypto(priv.public_key())
    trusted = _trusted_keyids(paths, role)
    if key.keyid not in trusted:
        raise RepoError(f"{p}: not a {role} key that {paths.repo} trusts (key {key.keyid[:12]}, trusted: "
                        f"{', '.join(k[:12] for k in sorted(trusted)) or 'none'}): --keys names another "
                        "repository's keys, or a `repo rotate` was interrupted; nothing was written")
    return CryptoSigner(priv, key)


def _check_keys(paths: RepoPaths, roles) -> None:
    """Every key a writer will sign with, loaded and checked before it changes anything (a wrong or missing key
    found halfway would leave a target without metadata, or a key renamed without its rotation)."""
    for r in roles:
        load_signer(paths, r)


def _trusted_keyids(paths: RepoPaths, role: str) -> set:
    """The key ids the repository's newest metadata trusts to sign ``role`` (root's for the top-level roles, the
    targets delegation's for a channel)."""
    if role in TOP_ROLES:
        return set(_latest(paths, "root").signed.roles[role].keyids)
    top = _latest(paths, "targets")
    roles = top.signed.delegations.roles if top.signed.delegations else {}
    return set(roles[role].keyids) if role in roles else set()


# -- metadata files ------------------------------------------------------------------------------------------------

def _file(paths: RepoPaths, role: str, version: int) -> Path:
    return paths.metadata / ("timestamp.json" if role == "timestamp" else f"{version}.{role}.json")


def _latest(paths: RepoPaths, role: str):
    """The newest version of ``role``'s metadata in the repository."""
    from tuf.api.metadata import Metadata

    if role == "timestamp":
        p = paths.metadata / "timestamp.json"
    else:
        versions = [int(f.name.split(".")[0]) for f in paths.metadata.glob(f"*.{role}.json")
                    if f.name.split(".")[0].isdigit()]
        if not versions:
            raise RepoError(f"{paths.repo}: not an edgecv TUF repository (no {role} metadata; `edgecv repo init`)")
        p = _file(paths, role, max(versions))
    try:
        return Metadata.from_bytes(p.read_bytes())
    except OSError:
        raise RepoError(f"{paths.repo}: not an edgecv TUF repository ({p.name} missing; `edgecv repo init`)") from None


def _write(paths: RepoPaths, name: str, md, signers: List, days: Optional[float] = None) -> None:
    """Give role ``name``'s metadata ``md`` its expiry, sign it with ``signers`` (its old signatures dropped) and
    write it atomically (``timestamp.json``, else ``VERSION.NAME.json``)."""
    md.signed.expires = _now() + timedelta(days=EXPIRY_DAYS.get(name, EXPIRY_DAYS["channel"]) if days is None
                                           else days)
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    atomic_write_bytes(_file(paths, name, md.signed.version), md.to_bytes())


def _snapshot_and_timestamp(paths: RepoPaths, changed: Dict[str, int], days: Dict[str, float]) -> None:
    """A new snapshot naming the ``changed`` targets metadata versions, then a new timestamp naming it."""
    from tuf.api.metadata import MetaFile

    snap = _latest(paths, "snapshot")
    snap.signed.version += 1
    for name, version in changed.items():
        snap.signed.meta[f"{name}.json"] = MetaFile(version=version)
    _write(paths, "snapshot", snap, [load_signer(paths, "snapshot")], days.get("snapshot"))
    refresh_timestamp(paths, days.get("timestamp"), snapshot_version=snap.signed.version)


@contextlib.contextmanager
def repo_lock(paths: RepoPaths, wait_s: Optional[float] = None) -> Iterator[None]:
    """The repository's writer lock, waited for up to ``wait_s`` (a timer's ``repo timestamp`` must not fail because
    a publish is running); then the holder is named."""
    from edgecv.errors import OutputError
    from edgecv.utils.outputs import OutputLock

    lock = OutputLock(paths.repo / "publish", f"{paths.repo} (TUF repository)")
    deadline = time.monotonic() + (LOCK_WAIT_S if wait_s is None else wait_s)
    log = logging.getLogger(__name__).info
    while True:
        try:
            lock.acquire()
            break
        except OutputError as e:
            if time.monotonic() >= deadline:
                raise
            if log is not None:
                log(f"waiting: {e}")
                log = None  # once
            time.sleep(0.2)
    try:
        yield
    finally:
        lock.release()


def timestamp(repo, keys=None, days: Optional[float] = None) -> int:
    """``edgecv repo timestamp``, under the repository's lock; returns the timestamp's version."""
    paths = RepoPaths.of(repo, keys)
    with repo_lock(paths):
        return refresh_timestamp(paths, days)


def refresh_timestamp(paths: RepoPaths, days: Optional[float] = None, snapshot_version: Optional[int] = None) -> int:
    """Re-sign the timestamp (a new version, a new expiry), the repository's lock held by the caller; run it from a
    timer at least daily (``timestamp``), or every vehicle refuses the repository as frozen."""
    from tuf.api.metadata import MetaFile

    ts = _latest(paths, "timestamp")
    ts.signed.version += 1
    if snapshot_version is not None:
        ts.signed.snapshot_meta = MetaFile(version=snapshot_version)
    _write(paths, "timestamp", ts, [load_signer(paths, "timestamp")], days)
    return ts.signed.version


def init_repo(paths: RepoPaths, channels=CHANNELS) -> None:
    """``edgecv repo init``: keys for every role and channel, and version 1 of every metadata file."""
    from tuf.api.metadata import DelegatedRole, Delegations, Key, Metadata, MetaFile, Role, Root, Snapshot, Targets, Timestamp

    if paths.metadata.exists() or (paths.keys.exists() and any(paths.keys.iterdir())):
        cut_short = "" if paths.metadata.exists() else (
            f" (no metadata yet: if an earlier `repo init` was cut short, remove {paths.keys} and run it again; if "
            "those keys sign another repository, give this one its own --keys)")
        raise RepoError(f"{paths.repo}: already holds a repository or keys ({paths.keys}); refusing to replace "
                        f"them{cut_short}")
    signers = {r: _new_key(paths, r) for r in (*TOP_ROLES, *channels)}
    root = Root(consistent_snapshot=True)
    for r in TOP_ROLES:
        root.roles[r] = Role([], threshold=1)
        root.add_key(signers[r].public_key, r)
    keys: Dict[str, Key] = {signers[c].public_key.keyid: signers[c].public_key for c in channels}
    roles = {c: DelegatedRole(c, [signers[c].public_key.keyid], 1, True, paths=[f"{c}/*"]) for c in channels}
    paths.metadata.mkdir(parents=True)
    _write(paths, "root", Metadata(root), [signers["root"]])
    _write(paths, "targets", Metadata(Targets(delegations=Delegations(keys, roles))), [signers["targets"]])
    for c in channels:
        _write(paths, c, Metadata(Targets()), [signers[c]])
    meta = {"targets.json": MetaFile(1), **{f"{c}.json": MetaFile(1) for c in channels}}
    _write(paths, "snapshot", Metadata(Snapshot(meta=meta)), [signers["snapshot"]])
    _write(paths, "timestamp", Metadata(Timestamp(snapshot_meta=MetaFile(1))), [signers["timestamp"]])


# -- publishing ----------------------------------------------------------------------------------------------------

def target_info(bundle) -> Dict:
    """What a release records in its TUF target (``custom.edgecv``): what ``edgecv update`` picks by and ``install``
    checks again (release number, compatibility, bundle id)."""
    m = bundle.manifest
    return {"release": int(m.get("release", 0) or 0), "bundle_id": m["manifest_sha256"],
            "compat": m.get("compat") if isinstance(m.get("compat"), dict) else {},
            "model": (m.get("model") or {}).get("arch")}


def _add_target(paths: RepoPaths, channel_md, path: str, data: bytes, custom: Optional[Dict] = None):
    """Write ``data`` as target ``path`` (its file named by its sha256, for consistent snapshots) into the channel's
    metadata."""
    from tuf.api.metadata import TargetFile

    tf = TargetFile.from_data(path, data, ["sha256"])
    if custom is not None:
        tf.unrecognized_fields["custom"] = {"edgecv": custom}
    d, name = os.path.split(path)
    atomic_write_bytes(paths.targets / d / f"{tf.hashes['sha256']}.{name}", data)
    channel_md.signed.targets[path] = tf
    return tf


def read_index(paths: RepoPaths, channel: str, channel_md) -> Dict:
    """The channel's index of releases as the repository holds it (``{"releases": [...]}``)."""
    tf = channel_md.signed.targets.get(f"{channel}/index.json")
    if tf is None:
        return {"releases": []}
    return json.loads((paths.targets / channel / f"{tf.hashes['sha256']}.index.json").read_bytes())


def publish(bundle_dir, repo, channel: str = "stable", keys=None, expiry: Optional[Dict[str, float]] = None) -> Dict:
    """``edgecv publish``: add a signed bundle to ``channel`` as a TUF target, with the channel's index, then a new
    snapshot and timestamp. Release numbers only go up within a channel. Returns what was published."""
    import tempfile

    from edgecv.bundle.archive import pack
    from edgecv.bundle.names import SIGNATURE
    from edgecv.bundle.reader import open_bundle

    paths = RepoPaths.of(repo, keys)
    b = open_bundle(bundle_dir)
    if not (b.root / SIGNATURE).is_file():
        raise RepoError(f"{b.root}: not signed; sign it first (edgecv sign {b.root} --key KEY): a vehicle trusts "
                        "the bundle's own signature, TUF only its delivery")
    info = target_info(b)
    with repo_lock(paths):
        md = _channel_md(paths, channel)
        _check_keys(paths, (channel, "snapshot", "timestamp"))
        index = read_index(paths, channel, md)
        newest = max((r["release"] for r in index["releases"]), default=-1)
        if info["release"] <= newest:
            raise RepoError(f"release {info['release']} is not newer than {channel}'s release {newest} (release "
                            "numbers only go up: export with --release N)")
        name = f"{channel}/{info['model'] or 'bundle'}-r{info['release']}.tar"
        with tempfile.TemporaryDirectory(prefix="edgecv-publish-") as tmp:
            tf = _add_target(paths, md, name, pack(b, Path(tmp) / "b.tar").read_bytes(), info)
        index["releases"].append({"target": name, **info, "length": tf.length, "published": _now().isoformat()})
        _add_target(paths, md, f"{channel}/index.json", (json.dumps(index, indent=2) + "\n").encode())
        md.signed.version += 1
        days = (expiry or {})
        _write(paths, channel, md, [load_signer(paths, channel)], days.get("channel"))
        _snapshot_and_timestamp(paths, {channel: md.signed.version}, days)
    return {"channel": channel, "target": name, **info, "length": tf.length}


def _channel_md(paths: RepoPaths, channel: str):
    top = _latest(paths, "targets")
    roles = top.signed.delegations.roles if top.signed.delegations else {}
    if channel not in roles:
        raise RepoError(f"{paths.repo}: no channel {channel!r} (channels: {', '.join(roles) or 'none'})")
    return _latest(paths, channel)


def rotate_key(repo, role: str, keys=None) -> Dict:
    """``edgecv repo rotate ROLE``: a new key for ``role``, the old one revoked. A top-level role is rotated in a new
    root version (signed by the root key; a new root key signs too, as the client's root walk requires); a channel
    in a new targets version. The old private key is kept as ``ROLE.pem.revoked-TIME``, no longer trusted."""
    paths = RepoPaths.of(repo, keys)
    with repo_lock(paths):
        return _rotate(paths, role, _now().strftime("%Y%m%dT%H%M%S"))


def _rotate(paths: RepoPaths, role: str, stamp: str) -> Dict:
    if role in TOP_ROLES:
        return _rotate_top(paths, role, stamp)
    top = _latest(paths, "targets")
    delegated = top.signed.delegations.roles if top.signed.delegations else {}
    if role not in delegated:
        raise RepoError(f"{role!r}: not a role of {paths.repo} ({', '.join((*TOP_ROLES, *delegated))})")
    _check_keys(paths, ("targets", "snapshot", "timestamp"))
    old = load_signer(paths, role)
    os.replace(paths.keys / f"{role}.pem", paths.keys / f"{role}.pem.revoked-{stamp}")
    new = _new_key(paths, role)
    top.signed.revoke_key(old.public_key.keyid, role)
    top.signed.add_key(new.public_key, role)
    top.signed.version += 1
    _write(paths, "targets", top, [load_signer(paths, "targets")])
    ch = _latest(paths, role)
    ch.signed.version += 1
    _write(paths, role, ch, [new])
    _snapshot_and_timestamp(paths, {"targets": top.signed.version, role: ch.signed.version}, {})
    return {"role": role, "revoked": old.public_key.keyid, "new": new.public_key.keyid}


def _rotate_top(paths: RepoPaths, role: str, stamp: str) -> Dict:
    root_md = _latest(paths, "root")
    _check_keys(paths, ("snapshot", "timestamp"))
    signer_old_root = load_signer(paths, "root")
    old = load_signer(paths, role)
    os.replace(paths.keys / f"{role}.pem", paths.keys / f"{role}.pem.revoked-{stamp}")
    new = _new_key(paths, role)
    root = root_md.signed
    root.revoke_key(old.public_key.keyid, role)
    root.add_key(new.public_key, role)
    root.version += 1
    # a new root is signed by the old root keys (the client checks it with the root it trusts) and the new
    _write(paths, "root", root_md, [signer_old_root] + ([new] if role == "root" else []))
    if role in ("targets", "snapshot", "timestamp"):
        md = _latest(paths, role)
        if role == "targets":
            md.signed.version += 1
            _write(paths, "targets", md, [new])
            _snapshot_and_timestamp(paths, {"targets": md.signed.version}, {})
        elif role == "snapshot":
            _snapshot_and_timestamp(paths, {}, {})
        else:
            refresh_timestamp(paths)
    return {"role": role, "revoked": old.public_key.keyid, "new": new.public_key.keyid,
            "root_version": root.version}
