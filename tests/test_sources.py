import json
import os
import threading
import time

import cv2
import numpy as np
import pytest
from test_runtime import make_video

from edgecv.runtime.stream.capture import SourceFailed, classify, gstreamer_available
from edgecv.runtime.stream.loop import run
from edgecv.runtime.stream.sources import FrameSource


def test_classify_sources(tmp_path):
    assert classify("0") == ("v4l2", 0)
    assert classify("/dev/video3") == ("v4l2", "/dev/video3")
    assert classify("csi://1") == ("csi", 1)
    assert classify("rtsp://cam/stream")[0] == "rtsp"
    assert classify("videotestsrc ! appsink")[0] == "gstreamer"
    assert classify(str(tmp_path))[0] == "folder"
    with pytest.raises(SourceFailed, match="no such file"):
        classify(str(tmp_path / "missing.mp4"))


def test_file_source_every_frame_json(tiny_bundle, tmp_path):
    vid = make_video(tmp_path / "v.mp4", 12)
    lines = []
    cv_threads = cv2.getNumThreads()
    s = run(str(tiny_bundle), str(vid), "onnxruntime", topk=3, smooth=2, as_json=True, emit=lines.append)
    assert s["frames"] == 12 and s["dropped"] == 0 and s["error"] is None
    assert cv2.getNumThreads() == cv_threads  # the loop's one-thread OpenCV setting does not leak
    rec = [json.loads(line) for line in lines]
    assert [r["frame"] for r in rec] == list(range(12))
    for r in rec:
        assert {"frame", "label", "index", "score", "latency_ms", "topk"} <= set(r) and "file" not in r  # a video
        assert set(r["latency_ms"]) == {"capture_wait", "preprocess", "infer", "postprocess"}
        assert len(r["topk"]) == 3 and r["topk"][0]["index"] == r["index"]
        scores = [t["score"] for t in r["topk"]]
        assert scores == sorted(scores, reverse=True) and r["score"] == scores[0]


def test_top_k_matches_full_sort():
    from edgecv.metrics import top_k

    p = np.random.default_rng(0).random(1000)
    for k in (1, 5, 1000):
        assert top_k(p, k).tolist() == np.argsort(-p, kind="stable")[:k].tolist()


def test_smoothing_is_the_mean_of_the_last_n_frames_at_one_vectors_cost():
    """A running sum: the mean over the whole window cost 10 ms a frame at 10,000 frames of 1,000 classes
    (measured 2026-12-06, 2-core EPYC), and --smooth had no ceiling on the window held in memory."""
    from collections import deque

    from edgecv.runtime.classifier import Smoother
    from edgecv.runtime.stream.options import RunOptions
    from edgecv.utils.limits import MAX_SMOOTH

    rng = np.random.default_rng(0)
    for n in (1, 2, 7):
        s, window = Smoother(n), deque(maxlen=n)
        for _ in range(50 * n):  # many windows: no drift from the running sum
            p = rng.dirichlet(np.ones(10)).astype(np.float32)
            window.append(p)
            got = s(p)
            assert got.dtype == np.float32 and np.allclose(got, np.mean(window, axis=0), atol=1e-6)
    assert s(np.full(3, 1 / 3, np.float32)).tolist() == pytest.approx([1 / 3] * 3)  # another width starts afresh
    s = Smoother(MAX_SMOOTH)
    p = rng.dirichlet(np.ones(1000)).astype(np.float32)
    for _ in range(MAX_SMOOTH):
        s(p)
    assert np.allclose(s(p), p, atol=1e-6) and s.total.shape == (1000,)  # a running sum, not the window's mean
    with pytest.raises(ValueError, match=f"smooth from 1 to {MAX_SMOOTH}"):
        RunOptions(smooth=MAX_SMOOTH + 1).check()


def test_folder_source_skips_corrupt_and_records(tiny_bundle, imagenet_dir, tmp_path):
    import shutil

    for f in sorted(imagenet_dir.glob("*.JPEG"))[:3]:
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8nope")
    rec = tmp_path / "out.mp4"
    s = run(str(tiny_bundle), str(tmp_path), "onnxruntime", record=str(rec), emit=lambda _: None)
    assert s["frames"] == 3 and s["skipped"] == 1
    cap = cv2.VideoCapture(str(rec))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


def test_a_folders_skipped_images_are_named_and_counted_in_the_summary_line(tiny_bundle, imagenet_dir, tmp_path,
                                                                           caplog):
    """The one-camera summary line had no skipped count: a folder of corrupt images ran 'frames 0' in silence."""
    import shutil

    from conftest import invoke

    shutil.copy(sorted(imagenet_dir.glob("*.JPEG"))[0], tmp_path / "a.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8nope")
    (tmp_path / "empty.png").write_bytes(b"")
    with caplog.at_level("WARNING", logger="edgecv.sources"):
        r = invoke("run", tiny_bundle, "--source", tmp_path, "--backend", "onnxruntime")
    assert r.exit_code == 0 and "frames 1 " in r.output and "skipped 2 " in r.output, r.output
    warned = [m for m in caplog.messages if "image skipped" in m]
    assert len(warned) == 1 and "broken.jpg: image skipped (not an image OpenCV can decode)" in warned[0]


def test_a_folders_json_lines_name_the_image_each_answer_is_for(tiny_bundle, imagenet_dir, tmp_path, caplog):
    """Skipped images shift the frame numbers, so frame N is not the Nth file: each line names its image (a name
    that is not UTF-8 too, recoverable with os.fsencode), and its answer is that image's alone. -v names every
    skipped image, not only the first."""
    import shutil

    from edgecv.runtime.classifier import Classifier

    photos = sorted(imagenet_dir.glob("*.JPEG"))[:3]
    names = ["a.jpg", os.fsdecode(b"b\xffname.jpg"), "d\nforged.jpg"]
    for src, name in zip(photos, names):
        shutil.copy(src, tmp_path / name)
    (tmp_path / "c_broken.jpg").write_bytes(b"\xff\xd8nope")
    (tmp_path / "c_empty.png").write_bytes(b"")
    lines = []
    with caplog.at_level("DEBUG", logger="edgecv.sources"):
        s = run(str(tiny_bundle), str(tmp_path), "onnxruntime", as_json=True, emit=lines.append)
    rec = [json.loads(line) for line in lines]
    assert s["frames"] == 3 and s["skipped"] == 2
    assert [r["frame"] for r in rec] == [0, 1, 2]
    assert [r["file"] for r in rec] == [str(tmp_path / n) for n in names]
    assert all(os.path.isfile(os.fsencode(r["file"])) for r in rec)
    with Classifier(str(tiny_bundle), "onnxruntime") as clf:
        alone = [clf.classify_frame(cv2.imread(str(f))) for f in photos]
    assert [r["index"] for r in rec] == [p.index for p in alone]
    assert [r["score"] for r in rec] == pytest.approx([p.score for p in alone], rel=1e-5)
    assert sum("image skipped" in m for m in caplog.messages) == 2
    lines = []  # without --json, one text line per image (a camera's frames print none)
    run(str(tiny_bundle), str(tmp_path), "onnxruntime", emit=lines.append)
    shown = [str(tmp_path / "a.jpg"), str(tmp_path) + "/b\\udcffname.jpg", str(tmp_path) + "/d\\nforged.jpg"]
    assert lines == [f"{f}  {r['label']}  {r['score']:.3f}" for f, r in zip(shown, rec)]


def test_v4l2_index_fails_cleanly(tiny_bundle):
    # A device that does not exist cannot start working by retrying: the first error names the cause.
    t0 = time.monotonic()
    s = run(str(tiny_bundle), "7", "onnxruntime", max_failures=3, emit=lambda _: None)
    assert s["frames"] == 0 and "/dev/video7: no such device" in s["error"] and s["reconnects"] == 0
    assert time.monotonic() - t0 < 5


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV has GStreamer")
def test_gstreamer_without_support_is_clear(tiny_bundle):
    s = run(str(tiny_bundle), "videotestsrc ! videoconvert ! appsink", "onnxruntime", max_failures=0,
            emit=lambda _: None)
    assert s["error"] and "giving up" in s["error"]
    with pytest.raises(SourceFailed, match="no GStreamer support"):
        from edgecv.runtime.stream.capture import open_capture

        open_capture("gstreamer", "videotestsrc ! appsink")


def test_looping_source_survives_file_removed(tiny_bundle, tmp_path):
    vid = make_video(tmp_path / "v.mp4", 10)
    threading.Timer(0.5, lambda: os.remove(vid)).start()
    s = run(str(tiny_bundle), str(vid), "onnxruntime", loop=True, max_failures=2, emit=lambda _: None)
    assert s["frames"] >= 10 and s["error"] and "giving up" in s["error"]


def test_latest_frame_reader_drops_stale_frames(tmp_path):
    vid = make_video(tmp_path / "v.mp4", 60)
    src = FrameSource(str(vid), realtime=True)
    frames = src.frames()
    next(frames)
    time.sleep(0.3)  # the reader keeps decoding; stale frames are dropped, not queued
    got = 1
    for _ in frames:
        got += 1
    src.close()
    assert got + src.dropped == 60 and src.dropped > 0


def test_top_k_softmax_matches_full_softmax():
    from edgecv.metrics import softmax, top_k, top_k_softmax

    logits = np.random.default_rng(1).normal(0, 3, 1000).astype(np.float32)
    probs = softmax(logits)
    for k in (1, 5):
        idx, scores = top_k_softmax(logits, k)
        assert idx.tolist() == top_k(probs, k).tolist()
        np.testing.assert_allclose(scores, probs[idx], rtol=1e-5)


def test_unsmoothed_json_scores_are_probabilities(tiny_bundle, tmp_path):
    vid = make_video(tmp_path / "v.mp4", 4)
    lines = []
    run(str(tiny_bundle), str(vid), "onnxruntime", topk=10, as_json=True, emit=lines.append)
    for r in map(json.loads, lines):
        scores = [t["score"] for t in r["topk"]]
        assert len(scores) == 10 and scores == sorted(scores, reverse=True)
        assert abs(sum(scores) - 1) < 1e-5  # all 10 classes of the tiny model: a full distribution


def test_file_decoder_threads_are_capped(tmp_path):
    vid = make_video(tmp_path / "v.mp4", 3)
    for threads, want in ((1, 1), (2, 2)):
        src = FrameSource(str(vid), decode_threads=threads)
        next(src.frames())
        assert src._cap.get(cv2.CAP_PROP_N_THREADS) == want
        src.close()


def test_csi_camera_scales_to_the_model_resize_in_hardware(tiny_bundle):
    from edgecv.bundle.reader import open_bundle
    from edgecv.runtime.preprocess import Preprocessor
    from edgecv.runtime.stream.capture import csi_pipeline
    from edgecv.runtime.stream.loop import csi_scale_to

    lite0 = Preprocessor({"resize": 256, "crop": 224, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3})
    assert csi_scale_to(lite0) == (455, 256)  # 1280x720 -> shorter side 256, torchvision's rounding
    pipe = csi_pipeline(0, scale_to=(455, 256))
    assert "nvvidconv interpolation-method=5 ! video/x-raw, width=455, height=256, format=BGRx" in pipe
    assert "width=455" not in csi_pipeline(0)  # --no-camera-resize: full 1280x720 frames
    tiny = Preprocessor(open_bundle(tiny_bundle).preprocess)
    w, h = csi_scale_to(tiny)
    assert min(w, h) == tiny.resize


def test_decode_threads_below_one_is_refused(tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from edgecv.cli import cli

    vid = make_video(tmp_path / "v.mp4", 2)
    with pytest.raises(ValueError, match="decode_threads must be >= 1, got 0"):
        run(str(tiny_bundle), str(vid), "onnxruntime", decode_threads=0, emit=lambda _: None)
    r = CliRunner().invoke(cli, ["run", str(tiny_bundle), "--source", str(vid), "--decode-threads", "0"])
    assert r.exit_code == 2 and "--decode-threads" in r.output
