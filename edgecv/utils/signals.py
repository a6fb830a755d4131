"""SIGTERM as an exception, so every ``finally`` (staging, temp files, recordings, locks) runs on a kill.

A service manager stops a process with SIGTERM; Python's default is to die at once, skipping cleanup.
``install`` turns it into :class:`Terminated`, which, like ``KeyboardInterrupt``, is a ``BaseException``
that ordinary ``except Exception`` handlers let through. The CLI exits 143 for it and 130 for Ctrl-C.
"""
from __future__ import annotations

import _thread
import signal
import threading


class Terminated(BaseException):
    """The process received SIGTERM."""

    exit_code = 143


def _raise(signum, frame):
    # Once: a second SIGTERM during cleanup must not interrupt the cleanup itself.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


_ROUTED = {signal.SIGTERM, signal.SIGINT}
_forwarding = False


def install() -> None:
    """Route SIGTERM to :class:`Terminated` and Ctrl-C to ``KeyboardInterrupt`` (main thread only; a no-op
    elsewhere), both received by one Python thread and raised in the main thread.

    Why the detour: a signal handler interrupts whatever native call its thread is in, and the kernel picks any
    thread that does not block the signal, the runtimes' native worker threads included. A SIGTERM arriving while
    OpenVINO or ONNX Runtime was compiling or running a model corrupted memory (a segfault moments later, at a
    random place, in most runs killed at the export's speed gate; also with the handler on the main thread).
    Blocked here before any of those threads exists, both signals are inherited blocked by every thread, stay
    pending until :func:`_forward` takes them with ``sigwait``, and reach Python's handlers in the main thread at
    its next bytecode, interrupting nothing.
    """
    global _forwarding
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _raise)
    if _forwarding:
        return
    _forwarding = True
    signal.pthread_sigmask(signal.SIG_BLOCK, _ROUTED)
    threading.Thread(target=_forward, name="edgecv-signals", daemon=True).start()


def _forward() -> None:
    # No wake-up signal to the main thread after this: one that interrupted a runtime's native call there crashed
    # as the stray SIGTERM did. A blocked main thread sees the exception when its wait ends; every wait in edgecv
    # is bounded (0.1 s steps, or a frame period).
    while True:
        _thread.interrupt_main(signal.sigwait(_ROUTED))


def child_unblock() -> None:
    """``preexec_fn`` for child processes: they start with SIGTERM and SIGINT deliverable again (a blocked mask is
    inherited across exec)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _ROUTED)


INTERRUPTS = (KeyboardInterrupt, Terminated)


def exit_code(exc: BaseException) -> int:
    """130 for Ctrl-C (128 + SIGINT), 143 for SIGTERM (128 + SIGTERM)."""
    return Terminated.exit_code if isinstance(exc, Terminated) else 130
