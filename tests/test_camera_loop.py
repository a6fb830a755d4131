"""The camera loop for vehicles (single source): real-time replay, frame age and the stale-frame policy, the
reject option, reconnect without giving up, and systemd's notify/watchdog protocol on a real datagram socket."""
import json
import os
import shutil
import threading
import time

import cv2
import numpy as np

from edgecv.runtime.stream.loop import run
from edgecv.runtime.stream.options import RunOptions


def make_video(path, n, fps=30, size=(64, 48)):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(n):
        w.write(np.full((size[1], size[0], 3), (i * 3) % 255, np.uint8))
    w.release()
    return path


def test_realtime_replay_of_a_3_s_clip_takes_3_s(tiny_bundle, tmp_path):
    vid = make_video(tmp_path / "clip.mp4", 90, fps=30)
    t0 = time.monotonic()
    s = run(str(tiny_bundle), str(vid), "onnxruntime", realtime=True, emit=lambda _: None)
    took = time.monotonic() - t0
    assert 2.85 <= took <= 3.5, took  # was 0.06 s for 10 s of video: the file was read as fast as it decoded
    assert s["frames"] + s["dropped"] == 90 and s["frames"] >= 75  # latest-frame semantics, a fast model


def test_realtime_folder_is_paced_at_fps(tiny_bundle, tmp_path, imagenet_dir):
    for f in sorted(imagenet_dir.glob("*.JPEG"))[:10]:
        shutil.copy(f, tmp_path / f.name)
    t0 = time.monotonic()
    s = run(str(tiny_bundle), str(tmp_path), "onnxruntime", realtime=True, fps=20, emit=lambda _: None)
    assert 0.4 <= time.monotonic() - t0 <= 0.9 and s["frames"] + s["dropped"] == 10


def test_frames_carry_age_and_stale_ones_are_never_classified(tiny_bundle, tmp_path):
    vid = make_video(tmp_path / "clip.mp4", 30)
    lines = []
    s = run(str(tiny_bundle), str(vid), "onnxruntime", as_json=True, emit=lines.append)
    rec = [json.loads(x) for x in lines]
    assert s["stale"] == 0 and len(rec) == 30 and all(r["age_ms"] >= 0 and r["capture_time"] > 1e9 for r in rec)
    assert s["age_ms"]["p99_ms"] >= s["age_ms"]["p50_ms"] >= 0
    lines.clear()
    s = run(str(tiny_bundle), str(vid), "onnxruntime", as_json=True, max_age_ms=0.0, emit=lines.append)
    assert s["frames"] == 0 and s["stale"] == 30 and lines == []  # every frame is older than a zero budget


def test_min_score_reports_unknown(tiny_bundle, tmp_path):
    vid = make_video(tmp_path / "clip.mp4", 10)
    lines = []
    s = run(str(tiny_bundle), str(vid), "onnxruntime", as_json=True, min_score=1.0, emit=lines.append)
    rec = [json.loads(x) for x in lines]
    assert s["unknown"] == 10 and all(r["label"] == "unknown" and r["index"] == -1 for r in rec)
    s = run(str(tiny_bundle), str(vid), "onnxruntime", min_score=0.0, emit=lambda _: None)
    assert s["unknown"] == 0


def test_lost_source_is_retried_until_it_returns(tiny_bundle, tmp_path):
    """No --max-failures: the loop keeps trying (capped backoff) and carries on when the source is back."""
    vid = make_video(tmp_path / "clip.mp4", 20)
    saved = tmp_path / "saved.mp4"
    shutil.copy(vid, saved)

    def outage():
        time.sleep(0.3)
        os.remove(vid)
        time.sleep(2.5)  # a few failed attempts (0.5 + 1 + 2 s backoff)
        shutil.copy(saved, vid)

    t = threading.Thread(target=outage)
    t.start()
    t0 = time.monotonic()
    s = run(str(tiny_bundle), str(vid), "onnxruntime", RunOptions(loop=True, realtime=True, max_frames=100),
            emit=lambda _: None)
    t.join()
    assert s["error"] is None and s["frames"] == 100 and s["reconnects"] >= 2
    assert time.monotonic() - t0 >= 2.5  # it waited the outage out instead of giving up


def test_watchdog_pings_stop_when_inference_hangs(tiny_bundle, tmp_path, monkeypatch, notify_socket):
    from edgecv.runtime.backends import ort as ort_backend

    collect = notify_socket  # WatchdogSec=0.2: pings every 0.1 s
    hang, hung_in, release, calls = threading.Event(), threading.Event(), threading.Event(), [0]
    real = ort_backend.OrtBackend.infer

    def infer(self, batch):
        calls[0] += 1
        if hang.is_set():
            hung_in.set()
            release.wait(30)  # a hung engine
            from edgecv.runtime.stream.capture import SourceFailed

            raise SourceFailed("test over")  # ends the loop once released
        return real(self, batch)

    monkeypatch.setattr(ort_backend.OrtBackend, "infer", infer)
    vid = make_video(tmp_path / "clip.mp4", 30)
    result = {}
    th = threading.Thread(target=lambda: result.update(run(str(tiny_bundle), str(vid), "onnxruntime",
                                                           RunOptions(loop=True, max_frames=100000),
                                                           emit=lambda _: None)))
    th.start()
    healthy = collect(1.0, after_ready=True)
    assert any(m.startswith("READY=1") for _, m in healthy)
    ready_at = next(t for t, m in healthy if m.startswith("READY=1"))
    pings = [t for t, m in healthy if m == "WATCHDOG=1" and t >= ready_at]
    # every 0.1 s; a gap up to 0.5 s allowed: the 2-core CI machine, shared with other work, has stalled a thread
    # past 0.3 s (one failure in a full run, none in 3 reruns)
    assert len(pings) >= 5 and max(np.diff(pings)) < 0.5
    hang.set()
    assert hung_in.wait(10)
    # the frame that was in flight when the hang began may have pinged; its datagram waits in the socket: read it off
    collect(0.2)
    hung = collect(1.0)
    assert [m for _, m in hung if m == "WATCHDOG=1"] == []  # systemd would restart the service now
    release.set()
    th.join(60)
    assert not th.is_alive() and result["frames"] > 0 and result["error"] == "test over"


def test_service_unit_runs_the_install_root_with_a_watchdog(tmp_path):
    from click.testing import CliRunner

    from edgecv.cli import cli

    out = tmp_path / "edgecv.service"
    r = CliRunner().invoke(cli, ["service-unit", "--root", str(tmp_path / "root"), "--source", "csi://0",
                                 "--watchdog", "5", "-o", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "Type=notify" in text and "WatchdogSec=5" in text and "Restart=on-failure" in text
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    import shlex

    assert shlex.split(exec_start[len("ExecStart="):])[-5:] == ["run", str(tmp_path / "root"), "--source", "csi://0",
                                                                 "--json"]
