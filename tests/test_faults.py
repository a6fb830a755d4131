"""Fault injection: real ``edgecv`` processes killed (SIGTERM, SIGKILL, Ctrl-C) at several stages of export,
``run --record`` and ``train``. Afterwards the previous output is intact and nothing is left behind (after
SIGKILL nothing but the dead process's temporaries, which the next run sweeps)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import cv2
import pytest
from conftest import TINY_RECIPE, invoke

from edgecv.bundle.reader import open_bundle
from edgecv.utils.io import TMP_TAG, sweep_stale

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def run_until(args, pattern, sig, cwd, timeout=180):
    """Start ``edgecv ARGS``; send ``sig`` when a line of its output matches ``pattern``."""
    p = subprocess.Popen([sys.executable, "-m", "edgecv", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, cwd=cwd, env=ENV)
    seen = []
    for line in p.stdout:
        seen.append(line)
        if re.search(pattern, line):
            p.send_signal(sig)
            break
    else:
        p.wait(timeout)
        pytest.fail(f"{pattern!r} never appeared:\n{''.join(seen)[-3000:]}")
    rest, _ = p.communicate(timeout=timeout)
    return p.returncode, "".join(seen) + rest, p.pid


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if TMP_TAG in n or n.endswith(".edgecv-lock"))


def snapshot(d):
    return {n: (d / n).read_bytes() for n in sorted(os.listdir(d))}


@pytest.fixture
def export_args(tiny_ckpt):
    # no robustness report: it runs before the speed gate, and no test here stops it
    return ["export", TINY_RECIPE, "--set", f"checkpoint={tiny_ckpt}", "--set", "data.train_limit=1000",
            "--corruptions", "none"]


# Where each signal lands: distill (2.6 s of the tiny export) and the speed gate (3.3 s) are long enough to be hit
# inside; the int8 stages take 0.1 s each, so a signal sent at "ONNX export" or "int8 tensorrt" lands somewhere in
# them (a SIGTERM at "int8 calibration" landed in the same stages as the SIGINT at "ONNX export": dropped).
@pytest.mark.parametrize("stage,sig", [("distill", signal.SIGTERM), ("speed gate", signal.SIGTERM),
                                       ("int8 tensorrt", signal.SIGKILL), ("ONNX export", signal.SIGINT)])
def test_killed_export_keeps_previous_bundle(stage, sig, tiny_bundle, tmp_path, export_args):
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    before = snapshot(out)
    rc, log, pid = run_until([*export_args, "-o", out], rf"\[edgecv export\] {stage}.* \.\.\.", sig, tmp_path)
    want = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -9}[sig]
    assert rc == want, log[-2000:]
    assert snapshot(out) == before and open_bundle(out)  # the previous bundle, byte for byte
    assert "Traceback" not in log
    if sig == signal.SIGKILL:  # no handler runs: only the dead process's staging remains, and is swept
        assert all(str(pid) in n for n in leftovers(tmp_path) if TMP_TAG in n)
        assert (tmp_path / ".bundle.edgecv-lock").read_text() == str(pid)  # a dead holder: not locked any more
        sweep_stale(tmp_path, "bundle")
        (tmp_path / ".bundle.edgecv-lock").unlink(missing_ok=True)  # what the next run's lock release does
    assert leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["bundle"]


def test_export_after_sigkill_sweeps_and_succeeds(tiny_bundle, tmp_path, export_args):
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    rc, log, pid = run_until([*export_args, "-o", out], r"\[edgecv export\] distill.* \.\.\.", signal.SIGKILL, tmp_path)
    assert rc == -9 and leftovers(tmp_path)
    r = subprocess.run([sys.executable, "-m", "edgecv", "export", *export_args[1:], "-o", out, "--json"],
                       capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["bundle"]
    assert open_bundle(out).manifest["summary"]["evaluation"]["disjoint_from_calibration"] is True


def _photos(imagenet_dir, dst, n=4):
    dst.mkdir()
    for f in sorted(imagenet_dir.glob("*.JPEG"))[:n]:
        shutil.copy(f, dst / f.name)
    return dst


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_record_finalises_video_and_prints_summary(sig, tiny_bundle, tmp_path, imagenet_dir):
    src = _photos(imagenet_dir, tmp_path / "photos")
    rec = tmp_path / "rec" / "out.mp4"
    rec.parent.mkdir()
    rc, log, _ = run_until(["run", tiny_bundle, "--source", src, "--loop", "--json", "--record", rec],
                           r'"frame": 30,', sig, tmp_path)
    assert rc == (143 if sig == signal.SIGTERM else 130), log[-2000:]
    summary = json.loads(next(line for line in log.splitlines() if line.startswith('{"summary"')))["summary"]
    assert summary["interrupted"] == ("SIGTERM" if sig == signal.SIGTERM else "SIGINT")
    assert summary["frames"] >= 31 and summary["recorded"] == str(rec)
    cap = cv2.VideoCapture(str(rec))
    assert summary["recorded_frames"] >= 30
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == summary["recorded_frames"]
    assert os.listdir(rec.parent) == ["out.mp4"]


def test_sigkill_during_record_keeps_previous_recording(tiny_bundle, tmp_path, imagenet_dir):
    src = _photos(imagenet_dir, tmp_path / "photos")
    rec = tmp_path / "rec" / "out.mp4"
    rec.parent.mkdir()
    rec.write_bytes(b"previous recording")
    rc, _, pid = run_until(["run", tiny_bundle, "--source", src, "--loop", "--json", "--record", rec],
                           r'"frame": 10,', signal.SIGKILL, tmp_path)
    assert rc == -9 and rec.read_bytes() == b"previous recording"
    assert leftovers(rec.parent) and all(str(pid) in n for n in leftovers(rec.parent))
    r = subprocess.run([sys.executable, "-m", "edgecv", "run", tiny_bundle, "--source", src, "--record", rec],
                       capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=120)
    assert r.returncode == 0 and os.listdir(rec.parent) == ["out.mp4"]  # the next run swept the dead one's temp
    assert int(cv2.VideoCapture(str(rec)).get(cv2.CAP_PROP_FRAME_COUNT)) == 4


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_train_keeps_previous_run_loadable(sig, tiny_ckpt, tmp_path):
    from edgecv.models.checkpoint import load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(tiny_ckpt.parent, run)
    model_before = (run / "model.pt").read_bytes()
    rc, log, pid = run_until(["train", TINY_RECIPE, "-o", run, "--set", "train.epochs=3", "--force"],
                             r"epoch 0: loss", sig, tmp_path)
    assert rc == (143 if sig == signal.SIGTERM else -9), log[-2000:]
    assert (run / "model.pt").read_bytes() == model_before  # the finished model of the previous run
    load_checkpoint(run / "last.pt")  # the resume point is whole (written atomically)
    if sig == signal.SIGKILL:
        sweep_stale(run)
        (tmp_path / ".run.edgecv-lock").unlink(missing_ok=True)
    assert leftovers(run) == [] and leftovers(tmp_path) == []


def test_failed_train_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # in this process: it fails before any work, so a new process bought nothing
    r = invoke("train", TINY_RECIPE, "-o", tmp_path / "runs" / "x", "--set", "data.path=/nonexistent")
    assert r.exit_code == 2 and "/nonexistent" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "runs" / "x").exists() and leftovers(tmp_path) == []


def test_untrained_model_is_never_written(tmp_path):
    for epochs in ("0", "-2"):
        r = invoke("train", TINY_RECIPE, "-o", tmp_path / "r", "--set", f"train.epochs={epochs}")
        assert r.exit_code == 2 and "train.epochs: must be >= 1" in r.output
    assert not (tmp_path / "r").exists()


def test_profile_leaves_nothing_in_tmp(tiny_bundle, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    r = subprocess.run([sys.executable, "-m", "edgecv", "profile", tiny_bundle, "--iters", "5"], capture_output=True,
                       text=True, env={**ENV, "TMPDIR": str(tmpdir)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [n for n in os.listdir(tmpdir) if n != ".ses"] == []  # .ses: onnxruntime's own, made on import


def test_second_train_to_the_same_run_is_refused(tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "edgecv", "train", str(TINY_RECIPE), "-o", str(run), "--set",
                          "train.epochs=3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    for line in p.stdout:
        if "train epoch 0" in line:
            break
    r = subprocess.run([sys.executable, "-m", "edgecv", "train", str(TINY_RECIPE), "-o", str(run)],
                       capture_output=True, text=True, env=ENV, timeout=60)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    assert r.returncode == 2 and f"another edgecv process (pid {p.pid})" in r.stderr, r.stderr
