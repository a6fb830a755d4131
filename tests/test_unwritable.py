"""When the machine cannot write: a full disk or a file-size limit (a real RLIMIT_FSIZE, SIGXFSZ ignored, as the
kernel fails each write past it), an output where a file is in the way, a folder nothing can be created in; or cannot
hold the work: a GPU out of memory. Each ends in one line and a non-zero exit, and leaves no temporary or half-written
file."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import FASHION, ROOT, TINY_RECIPE, invoke

from edgecv.data.fashion_mnist import CLASSES, load_fashion_mnist

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def refused(r, code, needle):
    """One line, exit ``code``, naming ``needle`` (the CLI's own error, or click's for a bad option)."""
    assert r.exit_code == code and needle in r.output, r.output
    assert r.output.strip().splitlines()[-1].startswith("error:") or "Error: Invalid value" in r.output, r.output


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tiny_ckpt, tmp_path):
    """A real write limit (RLIMIT_FSIZE, SIGXFSZ ignored: each write past 64 KB fails with EFBIG, as a full disk
    fails with ENOSPC): the export and the training each end in one line, exit 2, and leave no temporary file."""
    import resource
    import signal

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    for args in (["export", str(tiny_ckpt), "--calib", str(FASHION), "--eval", str(FASHION), "--corruptions", "none",
                  "-o", str(tmp_path / "b")],
                 ["train", str(TINY_RECIPE), "--set", "train.epochs=1", "-o", str(tmp_path / "r")]):
        r = subprocess.run([sys.executable, "-m", "edgecv", *args], capture_output=True, text=True, env=ENV,
                           timeout=300, cwd=ROOT, preexec_fn=small_files)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and last.startswith("error: ") and "File too large" in last, r.stderr[-1500:]
        assert "edgecv keeps no half-written file" in last and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()  # the export is staged: nothing of it is left
    left = [p.name for p in tmp_path.rglob("*") if "edgecv-tmp" in p.name or p.name.startswith(".b")]
    assert left == [], left


@pytest.mark.parametrize("limit,needle", [(300, "nothing playable could be written (the writer failed); no file "
                                                    "was kept"),
                                           (40_000, "incomplete, its index counts")])
def test_a_recording_the_disk_cannot_hold_is_an_error_not_a_claim(limit, needle, tiny_bundle, tmp_path):
    """OpenCV's writer reports no write error: under a real write limit (RLIMIT_FSIZE, SIGXFSZ ignored, as on a
    full disk) the summary claimed 100 recorded frames for a file of 5, or of none. Now: exit 2 and the truth."""
    import resource
    import signal

    video = tmp_path / "in.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    rng = np.random.default_rng(0)
    for _ in range(60):
        w.write(rng.integers(0, 255, (240, 320, 3), np.uint8))  # noise: every frame compresses badly
    w.release()

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    out = tmp_path / "rec.avi"
    r = subprocess.run([sys.executable, "-m", "edgecv", "run", str(tiny_bundle), "--source", str(video), "--record",
                        str(out), "--json"], capture_output=True, text=True, errors="replace", env=ENV,
                       timeout=120, preexec_fn=small_files)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
    summary = json.loads(next(x for x in r.stderr.splitlines() if x.startswith('{"summary"')))["summary"]
    assert summary["recorded_frames"] == 60 and needle in summary["record_error"] and needle in r.stderr
    assert out.exists() == (limit > 300) and not [p for p in tmp_path.iterdir() if "edgecv-tmp" in p.name]


def test_loose_output_folders_in_the_way_or_unwritable_are_named(tiny_ckpt, tiny_bundle, tmp_path):
    """explain, profile and the robustness report write loose files into -o: a file there, or a place nothing can
    be written to (/proc), is one line naming it, and the file is left as it was."""
    d = tmp_path / "d" / CLASSES[0].replace("/", "_")
    d.mkdir(parents=True)
    cv2.imwrite(str(d / "0.png"), load_fashion_mnist(FASHION, "test")[0][0])
    d = d.parent
    (tmp_path / "notes").write_text("mine")
    for out, needle in [(tmp_path / "notes", "notes: exists and is not a directory"),
                        ("/proc/edgecv-x", "/proc/edgecv-x: cannot create the output folder (No such file")]:
        refused(invoke("explain", tiny_ckpt, d, "-o", out), 2, needle)
        refused(invoke("profile", tiny_bundle, "--iters", "2", "-o", out), 2, needle)
        refused(invoke("eval", tiny_bundle, "--data", FASHION, "--corruptions", "noise", "--severities", "1",
                              "--limit", "4", "-o", out), 2, needle)
    assert (tmp_path / "notes").read_text() == "mine"
    refused(invoke("explain", tiny_bundle, d, "-o", tmp_path / "x"), 2, "a folder, not a recipe or checkpoint file")


def test_a_gpu_out_of_memory_is_one_line_with_advice_fake_gpu(tmp_path, monkeypatch):
    """There is no GPU here, so training raises the error PyTorch raises when one runs out of memory (its own
    class and message); the command ends in one line that says what to change, exit 2, not an internal error."""
    import torch

    import edgecv.train.loop

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                     "79.19 GiB of which 1.2 GiB is free. Of the allocated memory 75 GiB is allocated")

    monkeypatch.setattr(edgecv.train.loop, "train", out_of_memory)
    r = invoke("train", ROOT / "recipes" / "fashion_mnist.yaml", "-o", tmp_path / "run")
    assert r.exit_code == 2, r.output
    assert r.output.strip() == ("error: CUDA out of memory. Tried to allocate 2.00 GiB: lower the batch size (--set "
                                "data.batch_size=N), or keep the run on the CPU (CUDA_VISIBLE_DEVICES=)")
