"""Atomic file writes: a crash or a kill never leaves a half-written artefact in place.

Every artefact edgecv writes goes through ``atomic_path`` (a temporary file beside the target, then a
rename), and gets ordinary permissions (``0666 & ~umask``, so 0644 under the usual umask) rather than
``mkstemp``'s 0600: a service account on the device must be able to read a copied bundle.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

TMP_TAG = ".edgecv-tmp-"  # every temporary name edgecv makes contains this (stale ones are swept by pid)
SPECIAL = "a device, pipe or socket"  # how every message names a file that is none of file, folder or link
SMALL_FILE_BYTES = 16 << 20  # recipes, calibration sets, keys, pinned roots, class lists: kilobytes of text
# The machine's state, not the path's: a full disk, a quota, a read-only mount, a file-size limit.
FULL_OR_READ_ONLY = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def relative_hint(path: str | os.PathLike) -> str:
    """For a path that was not found: where a relative one was looked for (recipes name their data, calibration
    sets and checkpoints relative to the working directory, so a run from elsewhere misses them)."""
    if Path(path).is_absolute():
        return ""
    return f" (relative to the working directory {os.getcwd()})"


def umask() -> int:
    """The process umask (read without changing it for longer than two syscalls)."""
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def utf8_safe(path: str | os.PathLike) -> bool:
    """True when ``path`` is valid UTF-8 (a file name that is not decodes to surrogates, which OpenCV, whose
    C++ API takes UTF-8 strings, crashes on)."""
    try:
        os.fsdecode(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: Optional[int] = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename; ``mode`` (default
    ``file_mode()``) is set before the rename, so a private key is never readable by others, even for a moment."""
    with atomic_path(path, mode) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8, atomically. A file name that is not UTF-8 reaches Python as a str with surrogate
    escapes; written into a report it becomes its escape (``caf\\udce9``), still valid UTF-8, never a crash."""
    atomic_write_bytes(path, text.encode("utf-8", errors="backslashreplace"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: Optional[int] = None) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it into place if the block succeeds. A device, FIFO or socket
    at ``path`` is refused (OutputError), never replaced.

    The temporary name keeps ``path``'s suffix (OpenCV and matplotlib pick the format from it) and carries
    the writer's pid, so a copy left by a killed process is recognised and swept later.
    """
    path = Path(path)
    if is_special(path):  # it would be replaced by a file (as root: a device node); a folder fails the rename itself
        from edgecv.errors import UnwritableError

        raise UnwritableError(f"{path}: {SPECIAL}; refusing to replace it with a file")
    # The temporary's own name stays valid UTF-8 even when the target's is not: OpenCV's writers take a str
    # path and crash on one that is not UTF-8.
    stem = path.name if utf8_safe(path.name) else "edgecv-out"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}{TMP_TAG}{os.getpid()}-", suffix=path.suffix if utf8_safe(
            path.suffix) else ".tmp", dir=path.parent)
    except OSError as e:  # someone else's folder, a file where a folder belongs, /proc (says writable, is not)
        if e.errno in FULL_OR_READ_ONLY:  # the machine's state, which the CLI words as such
            raise
        from edgecv.errors import UnwritableError

        why = "a file is where a folder belongs" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror
        raise UnwritableError(f"{path}: cannot write in {path.parent} ({why or e})") from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


_RENAME_EXCHANGE = 2


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported.

    Replacing a directory with two renames leaves a moment in which it does not exist (a reader or a
    second writer then sees it missing); an exchange has no such moment.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target``; an existing ``target`` is swapped out atomically and removed."""
    if target.exists():
        if exchange(new, target):
            shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old content
            return
        old = new.with_name(new.name + "-old")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, target)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_array(a) -> str:
    """sha256 of an in-memory image's pixels (a numpy array, C order): the identity of an array image, as
    ``sha256_file`` is of an image file."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def is_special(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a device, FIFO or socket: there, and none of a regular file, a folder or a link."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


class NotASmallFile(ValueError):
    """A file that ``read_small`` will not read; the message is the reason, without the path."""


def read_small(path: str | os.PathLike, limit: int = SMALL_FILE_BYTES) -> bytes:
    """The bytes of a small regular file (a recipe, a key, a pinned root, a class list).

    A device, a pipe or a file larger than ``limit`` is refused before it is read, as ``NotASmallFile``:
    ``/dev/zero`` or a 30 GB file given where a recipe belongs would otherwise fill memory, and a FIFO would
    block. A missing or unreadable file raises ``OSError`` as ``open`` does.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO must not wait for a writer
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotASmallFile("a folder" if stat.S_ISDIR(st.st_mode) else SPECIAL)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)  # a file that grows after fstat is caught here
    if len(data) > limit or st.st_size > limit:
        raise NotASmallFile(f"{max(st.st_size, len(data)):,} bytes, over the {limit >> 20} MB such a file may hold")
    return data


def while_unchanged(cache: dict, path: str | os.PathLike, compute: Callable[[str], Any]) -> Any:
    """``compute(path)``, remembered in ``cache`` while the file keeps its size and modification time: training
    and an export list and hash one folder several times (each split, the training copies)."""
    st = os.stat(path)
    key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    if key not in cache:
        cache[key] = compute(os.fspath(path))
    return cache[key]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(folder: Path, name: Optional[str] = None) -> int:
    """Remove temporaries (for output ``name``, or any when None) in ``folder`` whose writer no longer runs."""
    n = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for p in entries:
        if TMP_TAG not in p.name or (name is not None and not p.name.startswith(f".{name}{TMP_TAG}")):
            continue
        m = re.match(r"\d+", p.name.split(TMP_TAG, 1)[1])
        if m is None or int(m.group()) == os.getpid() or pid_alive(int(m.group())):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        n += 1
    return n
