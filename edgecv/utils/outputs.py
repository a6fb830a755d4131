"""The one rule for output directories: edgecv never deletes or overwrites what it did not write.

An output directory is written only when it is new, empty, or already holds nothing but what edgecv
writes there (an edgecv bundle for ``export``, a training run for ``train``). A directory holding anything
else is refused, naming what is in the way; ``--force`` may replace a damaged bundle, never other files.
Symbolic links as outputs are refused (replacing one would replace the link, not what it points to).

One writer per output at a time: a lock file beside the output is taken without waiting, so a second
run to the same output is refused at once instead of racing. Whole-directory outputs are staged in a
temporary folder beside the output and swapped in atomically; staging left by a killed process is swept by
the next run (by pid). Staging and locks are removed on any error, Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, FrozenSet, Iterator, List, Optional, Tuple

from edgecv.errors import OutputError
from edgecv.utils.io import SPECIAL, TMP_TAG, NotASmallFile, dir_mode, is_special, read_small, replace_dir, sweep_stale

RUN_NAMES = re.compile(r"^(recipe\.yaml|last\.pt|model\.pt|log\.jsonl|log\.csv|metrics\.json|confusion\.png)$")


@dataclass(frozen=True)
class OutputKind:
    """What a directory of this kind may hold (so edgecv knows it wrote everything there)."""

    what: str  # "bundle" | "training run"
    names: "re.Pattern"
    manifest: Optional[str] = None  # a bundle's index: every file must be listed in it
    extra: Tuple[str, ...] = ()  # files the index cannot list (the signature covers the index itself)
    # the files an intact index lists (its bytes -> names), None when damaged: the bundle format's own reader
    listed: Optional[Callable[[bytes], Optional[FrozenSet[str]]]] = None


RUN = OutputKind("training run", RUN_NAMES)


def _entries(path: Path) -> List[str]:
    out = []
    for root, dirs, files in os.walk(path):
        rel = os.path.relpath(root, path)
        for n in dirs + files:
            out.append(n if rel == "." else os.path.join(rel, n))
    return out


def _is_ours(name: str) -> bool:
    """A temporary of edgecv's (a leftover of a killed writer, swept by pid)."""
    return TMP_TAG in name


def _listed_files(kind: OutputKind, manifest_path: Path) -> Optional[FrozenSet[str]]:
    """The files an intact index lists, or None when the index is damaged."""
    try:
        raw = read_small(manifest_path)
    except (OSError, NotASmallFile):
        return None
    return kind.listed(raw) if kind.listed else None


def inspect_output(path: Path, kind: OutputKind, force: bool = False) -> str:
    """``new`` | ``empty`` | ``ours`` when ``path`` may be written; else raise :class:`OutputError`.

    The error names the path and what is in the way, and says what to do instead.
    """
    if path.is_symlink():
        raise OutputError(f"{path}: is a symbolic link; give the directory itself "
                          f"({os.path.realpath(path)}) or a new path")
    if not path.exists():
        return "new"
    if not path.is_dir():
        raise OutputError(f"{path}: exists and is not a directory; choose a new or empty directory")
    try:
        entries = [e for e in _entries(path) if not _is_ours(os.path.basename(e))]
    except OSError as e:
        raise OutputError(f"{path}: cannot list the output directory ({e.strerror})") from None
    if not entries:
        return "empty"
    # links, and devices, FIFOs and sockets named like edgecv's files (a FIFO named log.jsonl blocked training in
    # an open() that SIGTERM could not interrupt): never edgecv's output
    links = [e for e in entries if os.path.islink(path / e) or is_special(path / e)]
    if kind.manifest:
        top = [e for e in entries if os.sep not in e]
        listed = _listed_files(kind, path / kind.manifest) if kind.manifest in top else None
        if listed is not None:
            foreign = sorted(e for e in entries if e != kind.manifest and e not in listed and e not in kind.extra
                             and not (path / e).is_dir())
            if not foreign and not links:
                return "ours"
        else:
            foreign = sorted(e for e in entries if not kind.names.match(os.path.basename(e)) or (path / e).is_dir())
            if not foreign and not links and kind.manifest in top:
                if force:
                    return "ours"
                raise OutputError(f"{path}: holds a damaged {kind.what} (its {kind.manifest} does not verify); "
                                  "pass --force to replace it, or choose a new or empty directory")
    else:
        foreign = sorted(e for e in entries if not kind.names.match(e))
        if not foreign and not links:
            return "ours"
    foreign = sorted(set(foreign) | set(links))
    shown = ", ".join(f"{e} ({SPECIAL})" if is_special(path / e) else e for e in foreign[:5])
    shown += f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
    raise OutputError(f"{path}: is not empty and not an edgecv {kind.what} (it holds {shown}); "
                      "edgecv never replaces other files: choose a new or empty directory")


class OutputLock:
    """An exclusive, non-waiting lock for one output path (``.NAME.edgecv-lock`` beside it).

    The lock file is removed on release; the inode check after locking makes that safe against a
    second process that opened the file just before it was removed. A killed holder's lock is released
    by the kernel, and its file is reused by the next run.
    """

    def __init__(self, target: Path, what: Optional[str] = None):
        self.path = target.parent / f".{target.name}.edgecv-lock"
        self.target = target
        self.what = what or str(target)
        self.fd: Optional[int] = None
        self.created: List[Path] = []  # parent folders made for the lock, removed again if left empty

    def acquire(self) -> "OutputLock":
        anc = self.target.parent
        while not anc.exists() and anc != anc.parent:
            self.created.append(anc)
            anc = anc.parent
        if self.created:
            _prepare_parent(self.target)
        try:
            return self._acquire()
        except BaseException:
            self._remove_created()
            raise

    def _remove_created(self) -> None:
        for d in self.created:  # innermost first
            try:
                d.rmdir()
            except OSError:
                break
        self.created = []

    def _acquire(self) -> "OutputLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # a read-only or pseudo file system, a folder of someone else's
                raise OutputError(f"{self.what}: cannot write in {self.target.parent} ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise OutputError(f"{self.what}: another edgecv process (pid {holder or '?'}) is writing it; "
                                  "wait for it to finish or choose another output") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
                self.fd = fd
                return self
            os.close(fd)  # the previous holder removed the file between our open and lock: retry

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None
        self._remove_created()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def not_a_folder(path: str | os.PathLike) -> Optional[str]:
    """Why ``path`` cannot be an output folder because something else is there, or None."""
    p = os.fsdecode(path)
    if os.path.islink(p) and not os.path.exists(p):
        return f"{p}: is a symbolic link that leads nowhere (dangling, or a loop)"
    return f"{p}: exists and is not a directory" if os.path.exists(p) and not os.path.isdir(p) else None


def output_folder(path: str | os.PathLike) -> Path:
    """A folder for loose outputs (heatmaps, a profile, a robustness report), made if missing; a file in the way
    or a place nothing can be written to is an :class:`OutputError` naming it."""
    path = Path(os.fsdecode(path))
    problem = not_a_folder(path)
    if problem:
        raise OutputError(problem)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create the output folder ({e.strerror})") from None
    return path


def check_output(path: str | os.PathLike, kind: OutputKind, force: bool = False) -> Path:
    """Everything :func:`staged_output` will check, without writing anything: call it before long work."""
    path = Path(os.path.abspath(os.fsdecode(path)))
    inspect_output(path, kind, force)
    _prepare_parent(path, create=False)
    return path


def _prepare_parent(path: Path, create: bool = True) -> None:
    anc = path.parent
    missing = []
    while not anc.exists() and anc != anc.parent:
        if anc.is_symlink():  # exists() follows links: a dangling one or a loop made mkdir fail "File exists"
            raise OutputError(f"{path}: cannot be created ({anc} is a symbolic link that leads nowhere: dangling, "
                              "or a loop)")
        missing.append(anc)
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"{path}: cannot be created ({anc} is not a directory)")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: output directory is not writable ({anc} is not writable)")
    if create:
        path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode())


@contextlib.contextmanager
def staged_output(path: str | os.PathLike, kind: OutputKind, force: bool = False,
                  lock: bool = True) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces ``path`` as a whole, atomically.

    ``path`` must pass :func:`inspect_output` (checked before and again, under the lock, just before the
    swap). ``lock=False`` when the caller already holds the :class:`OutputLock` (taken before its long
    work, so a second writer is refused at once). The staging directory holds ``out/`` (what becomes
    ``path``); scratch space may be made beside it
    with :func:`scratch_dir`. On any exception, Ctrl-C or SIGTERM nothing of the staging is left.
    """
    path = Path(os.path.abspath(os.fsdecode(path)))
    cwd = os.getcwd()
    if path == path.parent or os.path.commonpath([cwd, str(path)]) == str(path):
        raise OutputError(f"{path}: is the current directory or one of its parents; "
                          "choose a new or empty directory for the output")
    inspect_output(path, kind, force)
    _prepare_parent(path)
    with OutputLock(path) if lock else contextlib.nullcontext():
        sweep_stale(path.parent, path.name)
        stage = path.parent / f".{path.name}{TMP_TAG}{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(mode=dir_mode())
        try:
            out = stage / "out"
            out.mkdir(mode=dir_mode())
            yield out
            inspect_output(path, kind, force)  # nothing else appeared meanwhile
            replace_dir(out, path)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def scratch_dir(out: Path, name: str = "work") -> Path:
    """A scratch folder inside the staging of ``out`` (removed with it, never part of the output)."""
    p = out.parent / name
    p.mkdir(exist_ok=True, mode=0o700)
    return p


@contextlib.contextmanager
def run_output(path: str | os.PathLike, kind: OutputKind = RUN) -> Iterator[Path]:
    """An output directory written in place, file by file (each file atomically): a training run.

    The directory is checked and locked, but created only by the caller's first write; when the block
    fails before anything was written, a directory it created is removed again.
    """
    path = Path(os.path.abspath(os.fsdecode(path)))
    inspect_output(path, kind)
    _prepare_parent(path, create=False)
    existed = path.exists()
    with OutputLock(path):  # makes the missing parent folders, and removes them again if the run leaves them empty
        sweep_stale(path)
        try:
            yield path
        except BaseException:
            if not existed and path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            raise
