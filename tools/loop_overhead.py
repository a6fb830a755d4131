"""`edgecv run` loop overhead vs a bare InferenceSession.run on a ready tensor, measured in one run.

python tools/loop_overhead.py BUNDLE [--frames 500]
Ratio = mean(preprocess + infer + postprocess per frame in the loop) / mean(bare session.run).

It also splits the overhead: ``bare_with_gap`` runs the same bare call after an idle busy-wait as long as
the loop's non-inference time per frame, which shows what merely not calling ``run`` back to back costs
(ORT's worker threads stop spinning, caches cool) before any preprocessing touches memory.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edgecv.runtime.bundle import open_bundle
from edgecv.runtime.latency import measure_interleaved
from edgecv.runtime.run_loop import run

def synthetic_clip(frames: int, width: int, height: int) -> Path:
    """A temporary mp4 of random frames (a VGA camera stand-in that costs no decoding surprises)."""
    vid = Path(tempfile.mkdtemp()) / "clip.mp4"
    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"mp4v"), 30, (width, height))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        w.write(rng.integers(0, 255, (height, width, 3), np.uint8))
    w.release()
    return vid


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resize", choices=["area", "fast"], default="area")
    ap.add_argument("--size", default="640x480", help="clip frame size WxH (a VGA camera by default)")
    a = ap.parse_args()
    b = open_bundle(a.bundle)
    width, height = (int(v) for v in a.size.lower().split("x"))
    vid = synthetic_clip(100, width, height)
    rng = np.random.default_rng(0)
    import onnxruntime as ort

    from edgecv.runtime.ort_backend import session_options

    art = b.artifact("onnxruntime")
    sess = ort.InferenceSession(str(b.path(art["file"])), session_options(a.threads), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    shape = [1] + [int(d) for d in sess.get_inputs()[0].shape[1:]]
    x = rng.standard_normal(shape).astype(np.float32)
    bare1 = measure_interleaved({"bare": lambda: sess.run(None, {name: x})}, warmup=20, iters=a.frames, rounds=1)["bare"]
    s = run(a.bundle, str(vid), "onnxruntime", loop=True, max_frames=a.frames, threads=a.threads, emit=lambda _: None,
            resize=a.resize)
    bare2 = measure_interleaved({"bare": lambda: sess.run(None, {name: x})}, warmup=5, iters=a.frames, rounds=1)["bare"]
    bare = (bare1["mean_ms"] + bare2["mean_ms"]) / 2
    loop = s["latency_ms"]["pre_infer_post"]["mean_ms"]
    stages = {k: v["mean_ms"] for k, v in s["latency_ms"].items()}
    gap_s = (loop - stages["infer"] + stages["capture_wait"]) / 1e3

    def gap_then_run():
        t = time.perf_counter()
        while time.perf_counter() - t < gap_s:
            pass
        t = time.perf_counter()
        sess.run(None, {name: x})
        return time.perf_counter() - t

    gapped = [gap_then_run() for _ in range(a.frames)][20:]
    out = {"artifact": art["file"], "frame_size": a.size, "resize": a.resize, "threads": a.threads, "frames": s["frames"], "bare_run_mean_ms": bare,
           "loop_pre_infer_post_mean_ms": loop, "ratio": loop / bare,
           "stages_mean_ms": stages,
           "bare_with_gap_mean_ms": float(np.mean(gapped)) * 1e3,
           "infer_in_loop_vs_bare": stages["infer"] / bare,
           "bare_with_gap_vs_bare": float(np.mean(gapped)) * 1e3 / bare}
    print(json.dumps(out, indent=2))
