"""A systemd unit for the camera loop: ``Type=notify`` with a watchdog, restarted on failure or a hang.

``edgecv run`` sends READY=1 after its first classified frame and WATCHDOG=1 from its inference loop
(edgecv.runtime.stream.notify), so a hung engine stops the pings and systemd restarts the service.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Optional, Sequence

from edgecv.errors import UsageError

UNIT = """[Unit]
Description=edgecv camera classification ({source})
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
WatchdogSec={watchdog}
Restart=on-failure
RestartSec=2
TimeoutStartSec={start_timeout}
User={user}
Group={group}
SupplementaryGroups=video
# edgecv finalises recordings and prints its summary on SIGTERM (exit 143)
KillSignal=SIGTERM
SuccessExitStatus=143
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=multi-user.target
"""


class UnitError(UsageError):
    """A value cannot be written into a systemd unit (a control character, a bad user name)."""


# systemd's user and group names (its "relaxed" rule, as useradd accepts them), or a numeric id
_NAME = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_.-]{0,30}\$?|[0-9]{1,10})$")


def _plain(value: str, what: str) -> str:
    """``value`` if it holds no control character: a newline would start a directive of its own."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UnitError(f"{what}: {value!r} holds a control character (a newline would inject a unit directive)")
    return value


def exec_arg(value: str, what: str) -> str:
    """One argument of ``ExecStart=``: double-quoted, with C-style escapes for ``\\`` and ``"``, ``%%`` for a
    specifier's ``%`` and ``$$`` for a variable's ``$`` (so an RTSP password ``p%40ss`` stays itself)."""
    v = _plain(value, what).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{v}"'


def setting_text(value: str, what: str) -> str:
    """Free text of a setting such as ``Description=``: specifiers escaped, no control character, no trailing
    backslash (it would continue the line)."""
    return _plain(value, what).replace("%", "%%").rstrip("\\")


def unit_name(value: str, what: str) -> str:
    if not _NAME.match(value or ""):
        raise UnitError(f"{what}: {value!r} is not a user or group name (letters, digits, '_', '-', '.'; or a "
                        "numeric id)")
    return value


def _shown_source(source: str) -> str:
    """The source as the unit's description shows it (``systemctl status`` shows it to every user): an RTSP
    password is left out."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", source)


def unit_text(root: str, source: str, user: str = "edgecv", group: Optional[str] = None, watchdog_s: int = 10,
              start_timeout_s: int = 600, edgecv: Optional[Sequence[str]] = None,
              extra_args: Sequence[str] = ()) -> str:
    """The unit for ``edgecv run ROOT --source SOURCE --json`` (ROOT: an install root: runs its active slot).
    The start timeout covers a first TensorRT engine build on the device. Every value from the user is escaped
    for systemd or refused (UnitError)."""
    cmd = list(edgecv or [sys.executable, "-m", "edgecv"]) + ["run", root, "--source", source, "--json",
                                                             *extra_args]
    return UNIT.format(source=setting_text(_shown_source(source), "--source"),
                       exec_start=" ".join(exec_arg(c, "--root/--source" if c in (root, source) else "the command")
                                           for c in cmd),
                       watchdog=int(watchdog_s), start_timeout=int(start_timeout_s),
                       user=unit_name(user, "--user"), group=unit_name(group or user, "--group"))


def write_unit(path: str | os.PathLike, text: str, flag: str = "-o") -> None:
    """Write the unit atomically into an existing folder (a typo must not create /etc/systemd/sytem/); errors
    name the file as ``flag`` gave it."""
    from edgecv.utils.io import atomic_write_text

    p = os.path.abspath(os.fsdecode(path))
    folder = os.path.dirname(p)
    if os.path.isdir(p):
        raise UnitError(f"{flag} {path}: is a directory; give the unit's file name (e.g. {p}/edgecv.service)")
    if not os.path.isdir(folder):
        why = "is not a folder" if os.path.lexists(folder) else "does not exist"
        raise UnitError(f"{flag} {path}: {folder} {why}")
    atomic_write_text(p, text)


UPDATE_SERVICE = """[Unit]
Description=edgecv update from {url}
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart={exec_start}
# 3: the repository could not be reached (retried at the next timer tick); 2: refused, named in the journal
SuccessExitStatus=3
"""

UPDATE_TIMER = """[Unit]
Description=edgecv update from {url}, every {interval}

[Timer]
OnBootSec=2min
OnUnitActiveSec={interval}
RandomizedDelaySec={jitter}
Persistent=true

[Install]
WantedBy=timers.target
"""


def update_units(root: str, repo_url: str, channel: str, interval_min: int = 60,
                 edgecv: Optional[Sequence[str]] = None) -> dict:
    """``edgecv-update.service`` (one ``edgecv update`` run) and ``edgecv-update.timer`` (every ``interval_min``
    minutes, with up to a quarter of that as random delay so a fleet does not poll at the same second)."""
    cmd = list(edgecv or [sys.executable, "-m", "edgecv"]) + ["update", "--repo-url", repo_url, "--root", root,
                                                             "--channel", channel]
    shown = setting_text(_shown_source(repo_url), "--repo-url")
    return {"edgecv-update.service": UPDATE_SERVICE.format(url=shown, exec_start=" ".join(
                exec_arg(c, "--root/--repo-url/--channel") for c in cmd)),
            "edgecv-update.timer": UPDATE_TIMER.format(url=shown, interval=f"{int(interval_min)}min",
                                                       jitter=f"{max(1, int(interval_min) // 4)}min")}
