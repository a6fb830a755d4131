"""The output-directory rule (edgecv.utils.outputs) and atomic writes (edgecv.utils.io)."""
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgecv.bundle.manifest import BUNDLE
from edgecv.errors import OutputError
from edgecv.utils.io import TMP_TAG, atomic_path, atomic_write_text, replace_dir, sweep_stale
from edgecv.utils.outputs import RUN, OutputLock, check_output, inspect_output, run_output, staged_output


def _bundle_like(d, good=True):
    """A directory that is an edgecv bundle (its manifest verifies) or a damaged one."""
    from edgecv.bundle.manifest import manifest_bytes
    from edgecv.utils.io import sha256_file

    d.mkdir(parents=True, exist_ok=True)
    (d / "labels.txt").write_text("a\n")
    m = {"format_version": 1, "files": {"labels.txt": {"sha256": sha256_file(d / "labels.txt"), "size": 2}}}
    raw = manifest_bytes(m)
    (d / "manifest.json").write_bytes(raw if good else raw.replace(b'"size": 2', b'"size": 3'))
    return d


def test_user_files_are_never_replaced(tmp_path):
    user = tmp_path / "mine"
    (user / "photos").mkdir(parents=True)
    (user / "thesis.txt").write_text("years of work")
    for force in (False, True):
        with pytest.raises(OutputError, match="thesis.txt"):
            with staged_output(user, BUNDLE, force=force) as out:
                (out / "manifest.json").write_text("{}")
    assert (user / "thesis.txt").read_text() == "years of work" and (user / "photos").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["mine"]  # no staging, no lock file left


def test_training_run_dir_is_not_a_bundle(tmp_path):
    run = tmp_path / "runs" / "fm"
    run.mkdir(parents=True)
    for n in ("model.pt", "last.pt", "log.jsonl", "recipe.yaml"):
        (run / n).write_text(n)
    with pytest.raises(OutputError, match="not an edgecv bundle"):
        inspect_output(run, BUNDLE)
    assert inspect_output(run, RUN) == "ours"  # but train may continue in it
    (run / "notes.md").write_text("mine")
    with pytest.raises(OutputError, match="notes.md"):
        inspect_output(run, RUN)


def test_new_empty_and_bundle_dirs_are_writable(tmp_path):
    assert inspect_output(tmp_path / "new", BUNDLE) == "new"
    (tmp_path / "empty").mkdir()
    assert inspect_output(tmp_path / "empty", BUNDLE) == "empty"
    assert inspect_output(_bundle_like(tmp_path / "b"), BUNDLE) == "ours"


def test_damaged_bundle_needs_force_and_extra_files_never_go(tmp_path):
    bad = _bundle_like(tmp_path / "b", good=False)
    with pytest.raises(OutputError, match="--force"):
        inspect_output(bad, BUNDLE)
    assert inspect_output(bad, BUNDLE, force=True) == "ours"
    (bad / "thesis.txt").write_text("x")
    with pytest.raises(OutputError, match="thesis.txt"):
        inspect_output(bad, BUNDLE, force=True)


def test_symlinks_files_cwd_and_unwritable_parents_are_refused(tmp_path, monkeypatch):
    real = _bundle_like(tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(OutputError, match="symbolic link"):
        check_output(tmp_path / "link", BUNDLE)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        check_output(tmp_path / "f", BUNDLE)
    with pytest.raises(OutputError, match="cannot be created"):
        check_output(tmp_path / "f" / "sub", BUNDLE)
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    with pytest.raises(OutputError, match="current directory"):
        with staged_output(".", BUNDLE):
            pass
    with pytest.raises(OutputError, match="current directory"):
        with staged_output("..", BUNDLE):
            pass
    assert os.listdir(tmp_path / "empty") == [] and os.path.islink(tmp_path / "link")
    # a symlinked file inside an otherwise-bundle directory is not ours to remove
    (real / "extra").symlink_to("/etc/passwd")
    with pytest.raises(OutputError, match="extra"):
        inspect_output(real, BUNDLE)


def test_staged_output_replaces_atomically_and_cleans_up_on_error(tmp_path):
    target = _bundle_like(tmp_path / "b")
    before = (target / "manifest.json").read_bytes()
    with pytest.raises(RuntimeError):
        with staged_output(target, BUNDLE) as out:
            (out / "manifest.json").write_text("half")
            raise RuntimeError("gate failed")
    assert (target / "manifest.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["b"]
    with staged_output(target, BUNDLE) as out:
        (out / "labels.txt").write_text("new\n")
    assert sorted(os.listdir(target)) == ["labels.txt"] and sorted(os.listdir(tmp_path)) == ["b"]
    mode = stat.S_IMODE(os.stat(target).st_mode)
    assert mode & 0o055 == 0o055, oct(mode)  # readable and searchable by group and others (umask 022)


def test_second_writer_is_refused_at_once(tmp_path):
    target = tmp_path / "b"
    with OutputLock(target):
        t0 = time.monotonic()
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
            with staged_output(target, BUNDLE):
                pass
        assert time.monotonic() - t0 < 1
    with staged_output(target, BUNDLE) as out:  # released: the next one goes through
        (out / "x").write_text("1")
    assert not (tmp_path / f".{target.name}.edgecv-lock").exists()


def test_lock_of_a_killed_process_is_released(tmp_path):
    target = tmp_path / "b"
    code = ("import sys, time; from pathlib import Path; from edgecv.utils.outputs import OutputLock; "
            "OutputLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    with pytest.raises(OutputError, match=f"pid {p.pid}"):
        OutputLock(target).acquire()
    p.kill()
    p.wait()
    with OutputLock(target):  # the kernel released the dead holder's lock
        pass


def test_an_output_where_nothing_can_be_written_is_one_named_error():
    """/proc takes no new files (root included, so this holds in CI): the error names the output and the folder,
    not the lock file's errno."""
    with pytest.raises(OutputError, match=r"^/proc/edgecv-out: cannot write in /proc \(No such file or directory\)$"):
        with staged_output(Path("/proc/edgecv-out"), BUNDLE):
            pass


def test_a_single_file_where_nothing_can_be_written_is_one_named_error(tmp_path):
    """Every single-file write (a unit, a report, a timing cache) goes through atomic_path: /proc, or a file where a
    folder belongs, is one error naming the file and the folder, not the errno of its temporary's name (the CLI
    printed "[Errno 2] No such file or directory: '/proc/.x.service.edgecv-tmp-7460-vd86ikyw.service'")."""
    from conftest import invoke

    from edgecv.utils.io import atomic_write_text

    with pytest.raises(OutputError, match=r"^/proc/x.txt: cannot write in /proc \(No such file or directory\)$") as e:
        atomic_write_text("/proc/x.txt", "x")
    assert isinstance(e.value, OSError)  # the best-effort writes (install reports, update's refusals) catch OSError
    (tmp_path / "f").write_text("mine")
    with pytest.raises(OutputError, match=r"f/sub/x.txt: cannot write in .*f/sub \(a file is where a folder belongs\)$"):
        atomic_write_text(tmp_path / "f" / "sub" / "x.txt", "x")
    assert (tmp_path / "f").read_text() == "mine"
    r = invoke("service-unit", "--source", "0", "-o", "/proc/x.service")
    assert r.exit_code == 2 and r.output.strip() == "error: /proc/x.service: cannot write in /proc (No such file or "\
                                                    "directory)", r.output


def test_replace_dir_never_leaves_the_target_missing(tmp_path):
    """Two renames leave a gap (a stress test of the old code saw the target missing 37 times in 900
    replacements); the exchange has none."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "v").write_text("0")
    missing = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            if not target.is_dir():
                missing.append(1)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(300):
            new = tmp_path / f"new{i}"
            new.mkdir()
            (new / "v").write_text(str(i))
            replace_dir(new, target)
    finally:
        stop.set()
        t.join()
    assert (target / "v").read_text() == "299" and not missing
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_stale_temporaries_of_dead_processes_are_swept(tmp_path):
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(p.stdout)
    (tmp_path / f".b{TMP_TAG}{dead}").mkdir()
    (tmp_path / f".b{TMP_TAG}{dead}" / "half.onnx").write_bytes(b"x" * 100)
    (tmp_path / f".model.pt{TMP_TAG}{dead}-abc.pt").write_bytes(b"x")
    (tmp_path / f".b{TMP_TAG}{os.getpid()}-live").mkdir()  # ours, alive: kept
    (tmp_path / "user.txt").write_text("mine")
    assert sweep_stale(tmp_path) == 2
    assert sorted(os.listdir(tmp_path)) == [f".b{TMP_TAG}{os.getpid()}-live", "user.txt"]


def test_atomic_path_keeps_suffix_mode_and_cleans_up(tmp_path):
    with atomic_path(tmp_path / "a.png") as t:
        assert t.endswith(".png") and TMP_TAG in t
        open(t, "wb").write(b"png")
    assert stat.S_IMODE(os.stat(tmp_path / "a.png").st_mode) == 0o644
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "b.txt") as t:
            open(t, "w").write("half")
            raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ["a.png"]
    atomic_write_text(tmp_path / "a.png", "again")
    assert (tmp_path / "a.png").read_text() == "again"


def test_run_output_removes_a_dir_it_created_when_nothing_was_written(tmp_path):
    with pytest.raises(ValueError):
        with run_output(tmp_path / "runs" / "deeper" / "x") as out:
            raise ValueError("data missing")
    assert os.listdir(tmp_path) == []  # and the parent folders made for it (they were left behind)
    with run_output(tmp_path / "runs" / "y") as out:
        out.mkdir(parents=True)
        (out / "model.pt").write_text("w")
    assert (tmp_path / "runs" / "y" / "model.pt").exists()


def test_a_device_or_fifo_given_as_an_output_is_refused_never_replaced(tmp_path, tiny_bundle):
    """`run --record x.mp4` onto a FIFO or a device node named x.mp4 renamed the recording over it: as root, a
    device node replaced by a file. Every atomic write is guarded, so --timing-cache, units and reports are too."""
    import cv2
    import numpy as np
    from conftest import invoke

    (tmp_path / "frames").mkdir()
    cv2.imwrite(str(tmp_path / "frames" / "a.png"), np.zeros((32, 32, 3), np.uint8))
    fifo = tmp_path / "cam.mp4"
    os.mkfifo(fifo)
    targets = [fifo]
    if os.geteuid() == 0:  # a character device like /dev/null (1, 3), made where it harms nothing
        os.mknod(tmp_path / "null.mp4", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
        targets.append(tmp_path / "null.mp4")
    for t in targets:
        kind = stat.S_IFMT(os.lstat(t).st_mode)
        with pytest.raises(OutputError, match="a device, pipe or socket; refusing to replace it with a file"):
            atomic_write_text(t, "x")
        r = invoke("run", tiny_bundle, "--source", tmp_path / "frames", "--record", t)
        assert r.exit_code == 2 and "refusing to replace it with a file" in r.output, r.output
        assert stat.S_IFMT(os.lstat(t).st_mode) == kind
    assert not [n for n in os.listdir(tmp_path) if TMP_TAG in n]


def test_a_fifo_named_like_a_run_or_bundle_file_is_not_taken_for_edgecvs_own(tmp_path):
    """A FIFO named log.jsonl in a run folder passed as the run's own file: training then blocked opening it, in
    an open() that SIGTERM could not interrupt."""
    for kind, name in ((RUN, "log.jsonl"), (RUN, "metrics.json"), (BUNDLE, "report.md")):
        d = tmp_path / f"{kind.what}-{name}"
        d.mkdir()
        os.mkfifo(d / name)
        with pytest.raises(OutputError, match=rf"it holds {name} \(a device, pipe or socket\)"):
            inspect_output(d, kind)


def test_bundle_files_are_readable_by_a_service_account(tiny_bundle):
    um = os.umask(0)
    os.umask(um)
    for p in [tiny_bundle, *tiny_bundle.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == ((0o777 if p.is_dir() else 0o666) & ~um), (p, oct(mode))
