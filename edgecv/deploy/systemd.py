"""A systemd unit for the camera loop: ``Type=notify`` with a watchdog, restarted on failure or a hang.

``edgecv run`` sends READY=1 after its first classified frame and WATCHDOG=1 from its inference loop
(edgecv.runtime.notify), so a hung engine stops the pings and systemd restarts the service.
"""
from __future__ import annotations

import os
import shlex
import sys
from typing import Optional, Sequence

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


def unit_text(root: str, source: str, user: str = "edgecv", group: Optional[str] = None, watchdog_s: int = 10,
              start_timeout_s: int = 600, edgecv: Optional[Sequence[str]] = None,
              extra_args: Sequence[str] = ()) -> str:
    """The unit for ``edgecv run ROOT --source SOURCE --json`` (ROOT: an install root: runs its active slot).
    The start timeout covers a first TensorRT engine build on the device."""
    cmd = list(edgecv or [sys.executable, "-m", "edgecv"]) + ["run", root, "--source", source, "--json",
                                                             *extra_args]
    return UNIT.format(source=source, exec_start=" ".join(shlex.quote(c) for c in cmd), watchdog=int(watchdog_s),
                       start_timeout=int(start_timeout_s), user=user, group=group or user)


def write_unit(path: str | os.PathLike, text: str) -> None:
    from edgecv.utils.io import atomic_write_text

    atomic_write_text(path, text)
