"""SIGTERM as an exception, so every ``finally`` (staging, temp files, recordings, locks) runs on a kill.

A service manager stops a process with SIGTERM; Python's default is to die at once, skipping cleanup.
``install`` turns it into :class:`Terminated`, which, like ``KeyboardInterrupt``, is a ``BaseException``
that ordinary ``except Exception`` handlers let through. The CLI exits 143 for it and 130 for Ctrl-C.
"""
from __future__ import annotations

import signal
import threading


class Terminated(BaseException):
    """The process received SIGTERM."""

    exit_code = 143


def _raise(signum, frame):
    # Once: a second SIGTERM during cleanup must not interrupt the cleanup itself.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def install() -> None:
    """Route SIGTERM to :class:`Terminated` (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)


INTERRUPTS = (KeyboardInterrupt, Terminated)


def exit_code(exc: BaseException) -> int:
    """130 for Ctrl-C (128 + SIGINT), 143 for SIGTERM (128 + SIGTERM)."""
    return Terminated.exit_code if isinstance(exc, Terminated) else 130
