"""Sources end in an error that names the cause, within bounded time; Ctrl-C and SIGTERM end a run at once.

The silent RTSP server is a real TCP server on 127.0.0.1 (started by the test) that accepts connections and
never answers: what a hung camera or a black-holed stream looks like to FFmpeg.
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from conftest import free_port

from edgecv.errors import OutputError
from edgecv.runtime.stream.capture import SourceFailed
from edgecv.runtime.stream.loop import run
from edgecv.runtime.stream.sources import FrameSource

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def silent_server():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    conns, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"rtsp://127.0.0.1:{srv.getsockname()[1]}/stream", conns
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()




def make_video(path, n=40):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (64, 48))
    for i in range(n):
        w.write(np.full((48, 64, 3), (i * 5) % 255, np.uint8))
    w.release()
    return path


def test_silent_rtsp_server_is_bounded_by_open_timeout(tiny_bundle, silent_server):
    url, conns = silent_server
    t0 = time.monotonic()
    s = run(str(tiny_bundle), url, "onnxruntime", max_failures=1, open_timeout_s=1.0, emit=lambda _: None)
    took = time.monotonic() - t0
    assert s["frames"] == 0 and "timed out after 1 s opening" in s["error"] and "--open-timeout" in s["error"]
    assert took < 1.0 * 2 + 0.5 * 1 + 3  # two bounded opens and one backoff, not FFmpeg's 30 s per try
    assert conns  # it really connected


def test_refused_connection_is_named(tiny_bundle):
    url = f"rtsp://127.0.0.1:{free_port()}/x"
    s = run(str(tiny_bundle), url, "onnxruntime", max_failures=0, emit=lambda _: None)
    assert "connection refused" in s["error"] and "giving up after 1 failed attempt " in s["error"]


def test_unknown_host_fails_at_once(tiny_bundle):
    with pytest.raises(SourceFailed, match="cannot resolve host"):
        list(FrameSource("rtsp://no-such-host.invalid/x").frames())


def test_missing_device_and_undecodable_files_name_the_cause(tiny_bundle, tmp_path):
    t0 = time.monotonic()
    s = run(str(tiny_bundle), "/dev/video9", "onnxruntime", emit=lambda _: None)
    assert s["error"] == "/dev/video9: no such device (is the camera connected? ls /dev/video*)"
    (tmp_path / "notes.mp4").write_text("not a video at all")
    s = run(str(tiny_bundle), str(tmp_path / "notes.mp4"), "onnxruntime", emit=lambda _: None)
    assert "cannot decode" in s["error"] and s["reconnects"] == 0
    good = make_video(tmp_path / "v.mp4").read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(good[: len(good) // 2])  # moov atom at the end: nothing decodes
    s = run(str(tiny_bundle), str(tmp_path / "trunc.mp4"), "onnxruntime", emit=lambda _: None)
    assert "cannot decode" in s["error"] and s["frames"] == 0
    assert time.monotonic() - t0 < 5  # no retries for what retrying cannot fix (was ~16 s each)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_hanging_open_ends_within_a_second(sig, code, tiny_bundle, silent_server):
    url, conns = silent_server
    p = subprocess.Popen([sys.executable, "-m", "edgecv", "run", str(tiny_bundle), "--source", url],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    deadline = time.monotonic() + 30
    while not conns and time.monotonic() < deadline:  # wait until it hangs inside the open
        time.sleep(0.05)
    assert conns
    time.sleep(0.5)
    t0 = time.monotonic()
    p.send_signal(sig)
    out, _ = p.communicate(timeout=30)
    assert time.monotonic() - t0 < 1.0, out
    assert p.returncode == code and "frames 0" in out and "Traceback" not in out


@pytest.mark.parametrize("flag,value", [("--min-score", "nan"), ("--max-age", "nan"), ("--fps", "nan"),
                                        ("--open-timeout", "inf"), ("--read-timeout", "1e30")])
def test_numbers_that_are_not_finite_are_refused_by_flag(flag, value, tiny_bundle, tmp_path):
    """nan passed click's ranges (--min-score nan reported no frame as unknown), and an infinite timeout overflows
    the clocks it is given to; the API's options are checked the same way."""
    from conftest import invoke

    from edgecv.runtime.stream.options import RunOptions

    r = invoke("run", tiny_bundle, "--source", tmp_path, flag, value)
    assert r.exit_code == 2 and f"Invalid value for '{flag}'" in r.output, r.output
    field = {"--min-score": "min_score", "--max-age": "max_age_ms", "--fps": "fps", "--open-timeout": "open_timeout_s",
             "--read-timeout": "read_timeout_s"}[flag]
    with pytest.raises(ValueError):
        RunOptions(**{field: float(value)}).check()
    for args in (["update", "--repo-url", "https://h/x", "--timeout", value],
                 ["repo", "timestamp", tmp_path, "--days", "nan"]):
        r = invoke(*args)
        assert r.exit_code == 2 and "Invalid value for" in r.output, r.output


def test_bad_record_path_is_refused_before_the_run(tiny_bundle, tmp_path):
    vid = make_video(tmp_path / "v.mp4")
    for rec, msg in [(tmp_path / "missing" / "x.mp4", "does not exist"), (tmp_path / "x.xyz", "unsupported extension"),
                     (tmp_path, "unsupported extension|is a directory"),
                     ("/proc/x.mp4", r"--record /proc/x.mp4: cannot write in /proc \(")]:
        t0 = time.monotonic()
        with pytest.raises(OutputError, match=msg):
            run(str(tiny_bundle), str(vid), "onnxruntime", record=str(rec), emit=lambda _: None)
        assert time.monotonic() - t0 < 3
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        run(str(tiny_bundle), str(vid), "onnxruntime", record=str(tmp_path / "dir.mp4"), emit=lambda _: None)
    assert sorted(os.listdir(tmp_path)) == ["dir.mp4", "v.mp4"]


def test_cli_source_errors_exit_3_with_one_line(tiny_bundle, tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgecv", "run", str(tiny_bundle), "--source", "/dev/video9"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 3 and "error: /dev/video9: no such device" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "edgecv", "run", str(tiny_bundle), "--source", str(tmp_path / "nope")],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and "no such file, folder or device" in r.stderr
    r = subprocess.run([sys.executable, "-m", "edgecv", "run", str(tiny_bundle), "--source", "/dev/zero"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and "error: /dev/zero: not a video file, image folder or camera" in r.stderr
