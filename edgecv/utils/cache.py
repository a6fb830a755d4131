"""Where edgecv keeps what it caches on a machine: ``$EDGECV_CACHE``, else ``~/.cache/edgecv``.

Beneath it: ``verified/`` (what ``edgecv verify`` chose, per bundle), ``openvino/`` (compiled models) and
``engines/`` (TensorRT engines; ``$EDGECV_ENGINE_CACHE`` moves them alone).
"""
from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path
from typing import Iterator

from edgecv.errors import OutputError


def cache_root() -> Path:
    return Path(os.environ.get("EDGECV_CACHE") or Path.home() / ".cache" / "edgecv")


def cache_dir(name: str) -> Path:
    """A folder under the cache root (``engines`` may be moved on its own with ``$EDGECV_ENGINE_CACHE``)."""
    if name == "engines" and os.environ.get("EDGECV_ENGINE_CACHE"):
        return Path(os.environ["EDGECV_ENGINE_CACHE"])
    return cache_root() / name


def writable_cache_dir(name: str, create: bool = True) -> Path:
    """Cache folder ``name``, made if missing (``create=False``: only checked, nothing made); an OutputError naming
    it and the variable that moves it when it cannot be made or written (a read-only home on a vehicle,
    ``EDGECV_CACHE`` pointing at a file)."""
    d = cache_dir(name)
    try:
        if create:
            d.mkdir(parents=True, exist_ok=True)
        existing = next(a for a in (d, *d.parents) if a.exists())
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as e:
        var = "EDGECV_ENGINE_CACHE" if name == "engines" and os.environ.get("EDGECV_ENGINE_CACHE") else "EDGECV_CACHE"
        raise OutputError(f"{d}: cannot use this cache folder ({e.strerror}); set {var} to a writable folder") from None
    return d


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold cache folder ``name``'s lock against other processes; a waiter retries every 0.05 s, so Ctrl-C and
    SIGTERM still reach it. Where the folder cannot be made or written, it holds nothing.

    Why: OpenVINO reads a cached compiled model by mapping its file, and a second process that compiled the same
    model at the same time writes that file again; the first then died of SIGBUS (three ``edgecv update`` processes
    sharing one cache, in about one run of three). With compiles one at a time, the second finds the first's file.
    """
    import fcntl

    d = cache_dir(name)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # an unusable cache: no lock to take, and the cache's user reports the folder itself
        yield
        return
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock
