"""Several cameras in one run: batched engine calls, per-camera stats, one camera lost and back while the others
keep running. The RTSP camera is GStreamer's RTSP server on 127.0.0.1 (tests/helpers/rtsp_server.py, run with
Debian's python3-gi; .ci/run installs it)."""
import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from conftest import ROOT, free_port

from edgecv.errors import RecipeError
from edgecv.runtime.stream.cameras import Camera, load_cameras
from edgecv.runtime.stream.multi import run_multi
from edgecv.runtime.stream.options import RunOptions

SYSTEM_PYTHON = "/usr/bin/python3"


def make_video(path, n, fps=30):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (96, 72))
    for i in range(n):
        w.write(np.full((72, 96, 3), (i * 7) % 255, np.uint8))
    w.release()
    return path




def start_rtsp(port):
    p = subprocess.Popen([SYSTEM_PYTHON, str(ROOT / "tests" / "helpers" / "rtsp_server.py"), str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if p.stdout.readline().strip() != "ready":
        p.kill()
        pytest.fail("the test RTSP server did not start (apt: gir1.2-gst-rtsp-server-1.0 python3-gi)")
    return p


def test_four_sources_one_batched_call_each_round(tiny_bundle, tmp_path, imagenet_dir):
    v1, v2 = make_video(tmp_path / "a.mp4", 40), make_video(tmp_path / "b.mp4", 25)
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = sorted(imagenet_dir.glob("*.JPEG"))[:6]
    for f in photos:
        shutil.copy(f, folder / f.name)
    cams = [Camera("front", str(v1)), Camera("rear", str(v2)), Camera("left", str(folder)),
            Camera("right", str(v1))]
    lines = []
    s = run_multi(str(tiny_bundle), cams, RunOptions(as_json=True), emit=lines.append)
    per = s["cameras"]
    assert {c: per[c]["frames"] for c in per} == {"front": 40, "rear": 25, "left": 6, "right": 40}  # unpaced: all
    assert s["mean_batch"] > 1.5 and s["batches"] < s["frames"]  # several cameras per engine call
    rec = [json.loads(x) for x in lines]
    assert {r["camera"] for r in rec} == {"front", "rear", "left", "right"}
    assert all(r["age_ms"] >= 0 and 1 <= r["batch"] <= 4 for r in rec)
    assert [r["frame"] for r in rec if r["camera"] == "rear"] == list(range(25))
    assert [r.get("file") for r in rec if r["camera"] == "left"] == [str(folder / f.name) for f in photos]
    assert not any("file" in r for r in rec if r["camera"] != "left")  # a video's frames have no file
    lines.clear()  # paced like cameras: capture threads, the newest frame each (the names travel with them)
    s = run_multi(str(tiny_bundle), [Camera("left", str(folder)), Camera("right", str(folder))],
                  RunOptions(as_json=True, realtime=True, fps=20), emit=lines.append)
    rec = [json.loads(x) for x in lines]
    assert s["capture"] == "one thread per camera" and rec
    for cam in ("left", "right"):
        got = [r["file"] for r in rec if r["camera"] == cam]
        assert got == sorted(set(got)) and set(got) <= {str(folder / f.name) for f in photos}


def test_a_failed_camera_never_stops_the_others(tiny_bundle, tmp_path):
    v = make_video(tmp_path / "a.mp4", 30)
    s = run_multi(str(tiny_bundle), [Camera("ok", str(v)), Camera("gone", "/dev/video9")], RunOptions())
    assert s["cameras"]["ok"]["frames"] == 30 and "no such device" in s["cameras"]["gone"]["error"]
    assert s["error"] is None and s["camera_errors"]


def test_rtsp_camera_lost_and_back_while_the_others_run(tiny_bundle, tmp_path):
    port = free_port()
    server = start_rtsp(port)
    v = make_video(tmp_path / "a.mp4", 60)
    p = subprocess.Popen([sys.executable, "-m", "edgecv", "run", str(tiny_bundle), "--source", str(v), "--source",
                          f"rtsp://127.0.0.1:{port}/cam", "--realtime", "--loop", "--json", "--read-timeout", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    counts = {"cam0": 0, "cam1": 0}

    def read_for(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            line = p.stdout.readline()
            if line.startswith("{"):
                counts[json.loads(line)["camera"]] += 1
        return dict(counts)

    try:
        first = read_for(3)
        assert first["cam1"] > 10 and first["cam0"] > 10
        server.send_signal(signal.SIGTERM)
        server.wait(10)
        during = read_for(3)
        assert during["cam0"] - first["cam0"] > 30  # the file camera keeps going at its 30 fps
        server = start_rtsp(port)
        after = read_for(8)
        assert after["cam1"] > during["cam1"]  # the RTSP camera reconnected and delivers again
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    summary = json.loads(err.strip().splitlines()[-1])["summary"]
    assert p.returncode == 130 and summary["cameras"]["cam1"]["reconnects"] >= 1
    assert summary["cameras"]["cam0"]["age_ms"]["p99_ms"] < 200


def test_camera_list_file(tiny_bundle, tmp_path):
    v = make_video(tmp_path / "a.mp4", 10)
    cams = tmp_path / "cams.yaml"
    cams.write_text(f"cameras:\n  - {{id: front, source: {v}}}\n  - {{id: rear, source: {v}, realtime: false}}\n")
    assert [c.id for c in load_cameras(cams)] == ["front", "rear"]
    r = subprocess.run([sys.executable, "-m", "edgecv", "run", str(tiny_bundle), "--cameras", str(cams), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1000:]
    summary = json.loads(r.stderr.strip().splitlines()[-1])["summary"]
    assert summary["cameras"]["front"]["frames"] == 10 == summary["cameras"]["rear"]["frames"]
    for text, needle in [("cameras: []\n", "expected 'cameras:'"), ("cameras:\n  - {id: a}\n", "'source' string"),
                         (f"cameras:\n  - {{id: a, source: {v}}}\n  - {{id: a, source: {v}}}\n", "appears twice"),
                         (f"cameras:\n  - {{source: {v}, zoom: 2}}\n", "unknown key")]:
        cams.write_text(text)
        with pytest.raises(RecipeError, match=needle):
            load_cameras(cams)


def test_plan_workers_one_single_threaded_worker_per_core():
    from edgecv.runtime.backends.base import usable_cores
    from edgecv.runtime.stream.multi import plan_workers

    cores = usable_cores()
    assert plan_workers(None, None, 8) == (min(8, cores), 1 if cores > 1 else None)
    assert plan_workers(None, 2, 4) == (2, 1)
    assert plan_workers(None, 4, 2) == (2, 2)  # never more workers than cameras: the threads go to the workers
    assert plan_workers(None, 1, 4) == (1, 1)  # one thread: one worker with it
    assert plan_workers(1, 2, 4) == (1, 2)  # one worker keeps every thread
    with pytest.raises(ValueError, match="infer_workers"):
        plan_workers(0, None, 4)


def test_two_workers_keep_each_camera_in_capture_order_and_stop_at_max_frames(tiny_bundle, tmp_path):
    v1, v2 = make_video(tmp_path / "a.mp4", 60), make_video(tmp_path / "b.mp4", 45)
    cams = [Camera("a", str(v1)), Camera("b", str(v2)), Camera("c", str(v1)), Camera("d", str(v2))]
    lines = []
    s = run_multi(str(tiny_bundle), cams, RunOptions(as_json=True, infer_workers=2, threads=2), emit=lines.append)
    assert s["workers"] == 2 and s["threads_per_worker"] == 1
    assert {c: v["frames"] for c, v in s["cameras"].items()} == {"a": 60, "b": 45, "c": 60, "d": 45}
    assert sum(s["frames_per_worker"]) == 210 and min(s["frames_per_worker"]) > 0  # both engines ran rounds
    rec = [json.loads(x) for x in lines]
    for cam in "abcd":
        mine = [r for r in rec if r["camera"] == cam]
        assert [r["frame"] for r in mine] == list(range(len(mine)))
        times = [r["capture_time"] for r in mine]
        assert times == sorted(times)  # written in capture order, whichever worker finished first
    s = run_multi(str(tiny_bundle), cams, RunOptions(infer_workers=2, threads=2, max_frames=17, loop=True))
    assert s["frames"] == 17  # exactly: the workers share one frame budget


def test_watchdog_pings_stop_when_one_of_two_workers_hangs(tiny_bundle, tmp_path, monkeypatch, notify_socket):
    """A hung engine in a helper worker must stop the pings although the other worker keeps classifying."""
    from edgecv.runtime.backends import ort as ort_backend

    hang, hung, release = threading.Event(), threading.Event(), threading.Event()
    real = ort_backend.OrtBackend.infer

    def infer(self, batch):
        if hang.is_set() and threading.current_thread().name == "inference 1":
            hung.set()
            release.wait(30)  # this worker's engine hangs
            raise RuntimeError("engine failed")
        return real(self, batch)

    monkeypatch.setattr(ort_backend.OrtBackend, "infer", infer)
    v = make_video(tmp_path / "a.mp4", 30)
    result = {}

    def go():
        try:
            result["summary"] = run_multi(str(tiny_bundle), [Camera("a", str(v)), Camera("b", str(v))],
                                          RunOptions(backend="onnxruntime", loop=True, realtime=True,
                                                     infer_workers=2, threads=2))
        except RuntimeError as e:
            result["error"] = str(e)

    th = threading.Thread(target=go)
    th.start()

    def messages(seconds, after_ready=False):
        return [m for _, m in notify_socket(seconds, after_ready)]

    healthy = messages(1.5, after_ready=True)
    assert any(m.startswith("READY=1") for m in healthy) and healthy.count("WATCHDOG=1") >= 8
    hang.set()
    assert hung.wait(10)
    time.sleep(0.3)  # half the watchdog interval after the hang began, the other worker stops pinging
    messages(0.1)  # what was sent before that
    assert messages(1.0).count("WATCHDOG=1") == 0  # systemd would restart the service now
    release.set()
    th.join(60)
    assert not th.is_alive() and result == {"error": "engine failed"}  # the helper's failure is raised, not lost


def test_a_camera_holds_a_waiting_frame_and_asks_for_the_round_to_close(tmp_path, imagenet_dir):
    """A live camera whose previous frame is still waiting holds the new one up to hold_s (and flags the round
    urgent, so a worker gathering one closes it) instead of replacing at once: replacements, each a frame the
    model never sees, fall from one per frame period to one per hold."""
    from edgecv.runtime.stream.cameras import CameraThread
    from edgecv.runtime.stream.sources import FrameSource

    folder = tmp_path / "photos"
    folder.mkdir()
    for f in sorted(imagenet_dir.glob("*.JPEG"))[:3]:
        shutil.copy(f, folder / f.name)

    def unconsumed(hold_s, seconds=0.6):
        wake = threading.Condition()
        src = FrameSource(str(folder), loop=True, realtime=True, fps=100)  # a frame every 10 ms
        cam = CameraThread(Camera("c", str(folder)), src, wake, lambda f: f, hold_s=hold_s)
        urgent_seen = []
        cam.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # nobody takes a frame
            urgent_seen.append(cam.urgent)
            time.sleep(0.005)
        cam.stop.set()
        with wake:
            wake.notify_all()
        cam.join(5)
        src.close()
        return cam.dropped, any(urgent_seen)

    dropped_free, urgent_free = unconsumed(0.0)
    dropped_held, urgent_held = unconsumed(0.2)
    assert dropped_free >= 30 and not urgent_free  # ~60 frames in 0.6 s, all but one replaced
    assert dropped_held <= 4 and urgent_held  # one replacement per 0.2 s hold


def test_realtime_replays_start_their_clocks_at_the_gate(tmp_path):
    """A --realtime replay given a start gate opens (and reports its frame size) but delivers nothing until the
    gate is set; its first frame is stamped after that, so replays opened one by one start together."""
    from edgecv.runtime.stream.sources import FrameSource

    v = make_video(tmp_path / "a.mp4", 30)
    gate = threading.Event()
    src = FrameSource(str(v), loop=True, realtime=True, start_gate=gate)
    got = []
    th = threading.Thread(target=lambda: got.append((next(iter(src.frames())).shape, src.frame_time)), daemon=True)
    th.start()
    assert src.opened.wait(10) and src.frame_size() == (72, 96)
    time.sleep(0.3)
    assert got == []  # held at the gate
    opened_at = time.monotonic()
    gate.set()
    th.join(10)
    assert got and got[0][0] == (72, 96, 3) and got[0][1] >= opened_at
    src.close()


def _labels_by_frame(lines, camera=None):
    rec = [json.loads(x) for x in lines]
    return [(r["label"], round(r["score"], 4)) for r in rec if camera is None or r.get("camera") == camera]


def test_unpaced_sources_are_read_by_the_workers_and_classified_like_one_camera(tiny_bundle, tmp_path):
    """No live source: the workers read the clips themselves (no capture threads), and every camera's frame i gets
    exactly what the single-camera loop gives frame i. One live source among them: capture threads again."""
    from edgecv.runtime.stream.loop import run

    frames = np.random.default_rng(0).integers(0, 255, (30, 72, 96, 3), np.uint8)
    v = tmp_path / "noise.mp4"
    w = cv2.VideoWriter(str(v), cv2.VideoWriter_fourcc(*"mp4v"), 30, (96, 72))
    for f in frames:
        w.write(f)
    w.release()
    one = []
    run(str(tiny_bundle), str(v), options=RunOptions(as_json=True), emit=one.append)
    lines = []
    s = run_multi(str(tiny_bundle), [Camera(c, str(v)) for c in "abc"],
                  RunOptions(as_json=True, infer_workers=2, threads=2), emit=lines.append)
    assert s["capture"] == "read by the inference workers" and s["mean_batch"] > 1.5
    assert len(set(_labels_by_frame(one))) > 1  # the clip is not one label throughout: the check can fail
    for c in "abc":
        assert _labels_by_frame(lines, c) == _labels_by_frame(one)
    lines.clear()  # a budget no frame meets: every frame read is counted stale, none classified
    s = run_multi(str(tiny_bundle), [Camera(c, str(v)) for c in "ab"], RunOptions(as_json=True, max_age_ms=1e-6),
                  emit=lines.append)
    assert s["frames"] == 0 and not lines and [s["cameras"][c]["stale"] for c in "ab"] == [30, 30]
    s = run_multi(str(tiny_bundle), [Camera("file", str(v)), Camera("gone", "/dev/video9")], RunOptions())
    assert s["capture"] == "one thread per camera" and s["cameras"]["file"]["frames"] == 30


def test_a_looped_clip_that_vanishes_does_not_hold_up_the_others_read_inline(tiny_bundle, tmp_path):
    """A looped clip removed mid-run waits to reconnect (backoff) while the other camera goes on being read by
    the same workers; put back, it is read again."""
    keep, flaky = make_video(tmp_path / "keep.mp4", 30), make_video(tmp_path / "flaky.mp4", 10)
    hidden = tmp_path / "hidden.mp4"
    lines, hid_at = [], []

    def emit(line):
        lines.append(line)
        if len(lines) == 4:
            flaky.rename(hidden)  # the open capture reads to its end; reopening for the next pass fails
            hid_at.append(len(lines))
            back.start()  # should the whole loop stall (the defect this test is for), it still ends
        elif hid_at and len(lines) == hid_at[0] + 300:
            put_back()  # before the first retry (0.5 s)

    def put_back():
        with lock:
            if hidden.exists():
                hidden.rename(flaky)

    lock = threading.Lock()
    back = threading.Timer(3.0, put_back)

    s = run_multi(str(tiny_bundle), [Camera("keep", str(keep)), Camera("flaky", str(flaky))],
                  RunOptions(as_json=True, loop=True, max_frames=12000, infer_workers=2, threads=2), emit=emit)
    back.cancel()
    assert s["capture"] == "read by the inference workers" and s["frames"] == 12000
    assert s["cameras"]["flaky"]["reconnects"] >= 1 and s["cameras"]["flaky"]["error"] is None
    rec = [json.loads(x) for x in lines]
    flaky_at = [i for i, r in enumerate(rec) if r["camera"] == "flaky"]
    gap = max(b - a for a, b in zip(flaky_at, flaky_at[1:]))
    assert gap > 100  # the other camera went on while this one waited
    assert flaky_at[-1] > flaky_at[0] + gap  # and it came back
    assert [rec[i]["frame"] for i in flaky_at] == list(range(len(flaky_at)))


def test_frames_per_second_counts_classifying_not_releasing_the_engines(tiny_bundle, tmp_path, monkeypatch):
    """Releasing an engine (OpenVINO's compiled models: about 0.05 s each here) is teardown, not classification:
    with a 1 s release, 60 frames of a tiny model must still report far more than 60 frames/s, in both loops."""
    from edgecv.runtime.backends import ort as ort_backend
    from edgecv.runtime.stream.loop import run

    real = ort_backend.OrtBackend.close

    def slow_close(self):
        time.sleep(1.0)
        real(self)

    monkeypatch.setattr(ort_backend.OrtBackend, "close", slow_close)
    v = make_video(tmp_path / "a.mp4", 30)
    t0 = time.monotonic()
    one = run(str(tiny_bundle), str(v), "onnxruntime", emit=lambda _: None)
    assert time.monotonic() - t0 >= 1.0 and one["frames"] == 30  # the release did happen, inside the call
    assert one["fps"] > 60, one["fps"]  # was < 30: the 1 s release was counted as classifying time
    cams = [Camera("a", str(v)), Camera("b", str(v))]
    s = run_multi(str(tiny_bundle), cams, RunOptions(backend="onnxruntime", infer_workers=2, threads=2))
    assert s["frames"] == 60 and s["workers"] == 2
    assert s["fps"] > 120, s["fps"]  # was < 30: two engines released, 2 s
