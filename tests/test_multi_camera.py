"""Several cameras in one run: batched engine calls, per-camera stats, one camera lost and back while the others
keep running. The RTSP camera is GStreamer's RTSP server on 127.0.0.1 (tests/helpers/rtsp_server.py, run with
Debian's python3-gi; .ci/run installs it)."""
import json
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from conftest import ROOT, free_port

from edgecv.recipe import RecipeError
from edgecv.runtime.multi_loop import Camera, load_cameras, run_multi
from edgecv.runtime.run_loop import RunOptions

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
    for f in sorted(imagenet_dir.glob("*.JPEG"))[:6]:
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
