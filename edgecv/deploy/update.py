"""``edgecv update``: on the vehicle, pull the newest compatible release of a channel from a TUF repository served
by any static web server (edgecv.deploy.tuf_repo) and install it (edgecv.deploy.install).

It refreshes the TUF metadata with python-tuf's client (``tuf.ngclient``), starting from a pinned trusted
``root.json``, so a compromised mirror, a replayed old release, a frozen feed, a mixed snapshot, a changed or
endless download and a revoked key are all refused, each naming what it is. It then picks the newest release in the
channel's index that this device is compatible with and that is newer than what it has installed, downloads it
with its length and hash checked, and runs the install path: signature, checksums, compatibility, anti-rollback,
A/B slot, acceptance with the golden vectors, atomic switch. Nothing is downloaded when the device is up to date,
so it is safe to run from a timer; being offline, a 404 or an expired timestamp leave the active slot untouched.

The TUF state lives in the install root (``ROOT/tuf``: the trusted metadata, and downloads while one is installed).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from edgecv.errors import BundleError, DeviceError, InstallStateError, NoRoomError, UpdateError
from edgecv.utils.io import TMP_TAG, NotASmallFile, read_small, sweep_stale
from edgecv.utils.limits import MAX_TIMEOUT_S

TUF_DIR = "tuf"
# A release this device refused (its signature, compatibility or acceptance test) is not downloaded again for a
# day: a timer would otherwise fetch and test the same bundle every tick. A day, not for ever, so that a fixed
# trust configuration is picked up; --retry-refused tries at once.
REFUSED_FILE = "refused.json"
REFUSED_RETRY_S = 24 * 3600.0


class UpdateOffline(DeviceError):
    """The repository could not be reached (offline, refused, a 404): nothing changed; try again later."""


@dataclass
class UpdateOptions:
    repo_url: str
    channel: str = "stable"
    trusted_root: Optional[str] = None  # root.json to pin on the first update (delivered out of band)
    timeout_s: float = 30.0
    retry_refused: bool = False  # try a release this device refused in the last day again now

    def __post_init__(self):
        check_repo_url(self.repo_url)
        if not 1 <= self.timeout_s <= MAX_TIMEOUT_S:  # also nan; an infinite timeout overflows the socket's
            raise UpdateError(f"--timeout: expected 1 to {MAX_TIMEOUT_S:.0f} seconds, got {self.timeout_s}")


def check_repo_url(url: str) -> str:
    """``url`` when it can name a TUF repository (http or https, a host, a valid port), else UpdateError: a typo
    must be refused as one, not retried by a timer as a repository that is offline."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port outside 0-65535 or not a number
    except ValueError as e:
        raise UpdateError(f"--repo-url {url!r}: not a URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpdateError(f"--repo-url {url!r}: not an http:// or https:// URL with a host (e.g. "
                          "https://updates.example/fleet: the folder that holds metadata/ and targets/)")
    return url


def _refusal(e: BaseException) -> Exception:
    """A TUF client error as the one-line refusal that names the attack it stops."""
    from tuf.api import exceptions as x

    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, x.DownloadHTTPError):
        return UpdateOffline(f"the repository answered HTTP {getattr(e, 'status_code', '?')} (is --repo-url the "
                             "folder that holds metadata/ and targets/?)")
    if isinstance(e, x.SlowRetrievalError):  # urllib3 counts a refused connection as a connect timeout too
        return UpdateOffline("cannot reach the repository (connection refused, or no answer in time)")
    if isinstance(e, x.DownloadLengthMismatchError):
        return UpdateError(f"endless data refused: a download is longer than its signed length ({msg})")
    if isinstance(e, x.LengthOrHashMismatchError):
        return UpdateError(f"arbitrary package refused: a download does not match its signed length and hash ({msg})")
    if isinstance(e, x.ExpiredMetadataError):
        return UpdateError(f"freeze attack refused: the repository's metadata has expired ({msg}); the publisher "
                           "must re-sign the timestamp (edgecv repo timestamp)")
    if isinstance(e, x.BadVersionNumberError) and _mixed(msg):
        return UpdateError(f"inconsistent repository refused (mix-and-match: a metadata file is not the version the "
                           f"snapshot or timestamp signed for) ({msg})")
    if isinstance(e, (x.BadVersionNumberError, x.EqualVersionNumberError)):
        return UpdateError(f"rollback attack refused: older metadata than this device has already seen ({msg})")
    if isinstance(e, x.UnsignedMetadataError):
        return UpdateError(f"metadata not signed by the keys this device trusts (a forged, revoked or rotated-out "
                           f"key) refused ({msg})")
    if isinstance(e, x.RepositoryError):
        return UpdateError(f"inconsistent repository refused (mix-and-match: metadata that does not belong "
                           f"together) ({msg})")
    return UpdateOffline(f"cannot reach the repository ({type(e).__name__}: {msg})")


def _mixed(msg: str) -> bool:
    """python-tuf's version mismatch against what a trusted timestamp or snapshot names (not a rollback below what
    this device saw before)."""
    return msg.startswith("Expected snapshot version") or re.match(r"Expected [\w./-]+ v\d+, got v\d+", msg) is not None


def _updater(root: Path, o: UpdateOptions):
    """python-tuf's client over ``ROOT/tuf``, bootstrapped from the pinned root on the first update."""
    from tuf.ngclient import Updater, UpdaterConfig, Urllib3Fetcher

    from edgecv import __version__

    md, dl = root / TUF_DIR / "metadata", root / TUF_DIR / "downloads"
    bootstrap = None
    if not (md / "root.json").exists():
        if not o.trusted_root:
            raise UpdateError(f"{root}: no trusted root yet: the first update needs --trusted-root ROOT.json (the "
                              "repository's 1.root.json, delivered to the vehicle out of band)")
        try:
            bootstrap = read_small(o.trusted_root)
        except NotASmallFile as e:
            raise UpdateError(f"--trusted-root {o.trusted_root}: not a root.json ({e})") from None
        except OSError as e:
            raise UpdateError(f"--trusted-root {o.trusted_root}: cannot be read ({e.strerror})") from None
    for d in (md, dl):
        d.mkdir(parents=True, exist_ok=True, mode=0o755)
    url = o.repo_url.rstrip("/")
    try:
        agent = f"edgecv/{__version__}"  # the timeout bounds a stalled server: a timer's run must end
        up = Updater(str(md), f"{url}/metadata/", str(dl), f"{url}/targets/",
                     Urllib3Fetcher(socket_timeout=int(o.timeout_s), app_user_agent=agent),
                     UpdaterConfig(app_user_agent=agent), bootstrap=bootstrap)
    except Exception as e:  # noqa: BLE001 - a pinned root that is not one, in many exception types
        raise UpdateError(f"the trusted root does not verify ({str(e).splitlines()[0] if str(e) else e!r})") from None
    return up


def _tuf(call: Callable, *args):
    """Run a TUF client call, its errors as refusals that name what they stop."""
    import urllib3
    from tuf.api import exceptions as x

    try:
        return call(*args)
    except (x.RepositoryError, x.DownloadError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as e:
        raise _refusal(e) from None


def _newest(releases, floor: int) -> Optional[Dict]:
    """The newest release this device is compatible with, if newer than the installed ``floor``."""
    from edgecv.deploy.install import check_compatibility

    ok = [r for r in releases if type(r.get("release")) is int and r["release"] > floor
          and all(c["ok"] for c in check_compatibility({"compat": r.get("compat") or {}}))]
    return max(ok, key=lambda r: r["release"]) if ok else None


def update(root, options: UpdateOptions, log=print) -> Dict:
    """Bring ``root`` (an install root) to the newest compatible release of ``options.channel``; the report says
    ``up to date`` (nothing downloaded) or carries the install report."""
    from edgecv.bundle.slots import current_state
    from edgecv.deploy.install import default_root, prepare_root
    from edgecv.utils.outputs import OutputLock

    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retry warnings are not the user's news
    root = Path(os.path.abspath(root or default_root()))
    prepare_root(root)
    with OutputLock(root / "update", f"{root} (update)"):
        _sweep_leftovers(root)
        up = _updater(root, options)
        _tuf(up.refresh)
        floor = current_state(root).highest_release if (root / "install.json").exists() else -1
        releases = _index(up, options.channel).get("releases", [])
        skipped = {} if options.retry_refused else _refused_recently(root)
        pick = _newest([r for r in releases if r.get("bundle_id") not in skipped], floor)
        passed_over = sorted((r for r in skipped.values() if r["release"] > floor
                              and (pick is None or r["release"] > pick["release"])), key=lambda r: r["release"])
        for r in passed_over:
            log(f"[edgecv update] release {r['release']} was refused on this device "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(r['at']))} ({r['reason']}); not downloaded "
                "again before a day has passed or a newer release is published (--retry-refused: now)")
        if pick is None:
            newest = max((r.get("release", -1) for r in releases), default=None)
            log(f"[edgecv update] up to date: installed release {floor}, newest compatible in {options.channel}: "
                f"{newest if newest is not None else 'none'}")
            return {"status": "up to date", "installed_release": floor, "channel": options.channel,
                    "refused_here": [r["release"] for r in passed_over]}
        return _install_release(up, root, pick, log, options.repo_url)


def _refused_recently(root: Path) -> Dict[str, Dict]:
    """The releases this device refused within ``REFUSED_RETRY_S``, by bundle id (a damaged record is none)."""
    try:
        d = json.loads(read_small(root / TUF_DIR / REFUSED_FILE))
    except (OSError, NotASmallFile, ValueError, RecursionError):
        return {}
    now = time.time()
    return {b: r for b, r in (d.items() if isinstance(d, dict) else ())
            if isinstance(r, dict) and type(r.get("release")) is int and isinstance(r.get("at"), (int, float))
            and 0 <= now - r["at"] < REFUSED_RETRY_S and isinstance(r.get("reason"), str)}


def _remember_refusal(root: Path, pick: Dict, reason: str) -> None:
    """Record that this device refused ``pick`` (the newest 20 refusals are kept); best effort: a full disk must
    not replace the refusal's own message."""
    from edgecv.utils.io import atomic_write_json

    d = _refused_recently(root)
    d[pick["bundle_id"]] = {"release": pick["release"], "target": pick["target"], "reason": reason[:300],
                            "at": time.time()}
    try:
        atomic_write_json(root / TUF_DIR / REFUSED_FILE, dict(sorted(d.items(), key=lambda kv: kv[1]["at"])[-20:]))
    except OSError as e:
        logging.getLogger("edgecv.update").warning("could not record the refusal (%s)", e.strerror or e)


def _sweep_leftovers(root: Path) -> None:
    """What an update cut off by a power loss or SIGKILL left (its unpacked staging folder, its downloaded
    archive): a vehicle that loses power during updates must not fill its disk with them. Only one update runs
    at a time (the caller holds the lock), so every download left is stale."""
    sweep_stale(root, "update")
    downloads = root / TUF_DIR / "downloads"
    for p in downloads.iterdir() if downloads.is_dir() else ():
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)


def _index(up, channel: str) -> Dict:
    info = _tuf(up.get_targetinfo, f"{channel}/index.json")
    if info is None:
        raise UpdateError(f"channel {channel!r} has no releases in this repository")
    # kept between polls: an unchanged index (its hash still the signed one) is not downloaded again
    path = _tuf(up.find_cached_target, info) or _tuf(up.download_target, info)
    try:
        index = json.loads(Path(path).read_bytes())
    except ValueError as e:
        raise UpdateError(f"{channel}/index.json: not JSON ({e})") from None
    if not isinstance(index, dict) or not isinstance(index.get("releases"), list):
        raise UpdateError(f"{channel}/index.json: expected {{releases: [...]}}")
    return index


def _install_release(up, root: Path, pick: Dict, log, url: str) -> Dict:
    """Download the picked release (length and hash checked), check it is what the index said, install it."""
    from edgecv.bundle.archive import unpack
    from edgecv.bundle.reader import open_bundle
    from edgecv.deploy.install import install

    info = _tuf(up.get_targetinfo, pick["target"])
    custom = ((info.unrecognized_fields.get("custom") or {}).get("edgecv") or {}) if info else {}
    if info is None or custom.get("release") != pick["release"] or custom.get("bundle_id") != pick["bundle_id"]:
        raise UpdateError(f"{pick['target']}: its signed target does not match the channel's index (mix-and-match)")
    log(f"[edgecv update] downloading release {pick['release']} ({info.length} bytes) ...")
    archive = Path(_tuf(up.download_target, info))
    staging = root / f".update{TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:12]}"  # swept by pid when left
    try:
        unpack(archive, staging, max_bytes=4 * info.length + (1 << 20))
        if open_bundle(staging).manifest["manifest_sha256"] != pick["bundle_id"]:
            raise UpdateError(f"{pick['target']}: the bundle inside is not the one the repository signed for")
        rep = install(staging, root, log=log, source=f"{url.rstrip('/')}/targets/{pick['target']}")
    except BundleError as e:  # the bundle refused here: its signature, compatibility, acceptance
        if not isinstance(e, (InstallStateError, NoRoomError)):  # the device's state, not the release's
            _remember_refusal(root, pick, str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink(missing_ok=True)
    return {**rep, "status": "installed", "target": pick["target"]}
