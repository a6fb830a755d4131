"""systemd service notification (``Type=notify``, ``WatchdogSec``) by the documented datagram protocol.

systemd passes ``NOTIFY_SOCKET`` (a UNIX datagram socket, ``@`` for the abstract namespace) and, with
``WatchdogSec``, ``WATCHDOG_USEC``. The run loop sends ``READY=1`` once its first frame is classified and
``WATCHDOG=1`` from the inference loop at half the watchdog interval, so a hung inference (or a hung engine)
stops the pings and systemd restarts the service. Without ``NOTIFY_SOCKET`` every call is a no-op.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Mapping, Optional


class Notifier:
    def __init__(self, env: Optional[Mapping[str, str]] = None):
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.addr = ("\0" + addr[1:]) if addr.startswith("@") else addr
        self.sock: Optional[socket.socket] = None
        if self.addr:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            except OSError:
                self.sock = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.interval = int(usec) / 1e6 / 2 if usec.isdigit() and int(usec) > 0 and mine else None
        self._last = 0.0
        self.ready_sent = False

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, msg: str) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.sendto(msg.encode(), self.addr)
            return True
        except OSError:  # systemd gone or the socket full: never a reason to stop classifying
            return False

    def ready(self, status: str = "") -> None:
        if not self.ready_sent:
            self.ready_sent = self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def ping(self) -> None:
        """WATCHDOG=1, at most every half watchdog interval."""
        if self.interval is None:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
