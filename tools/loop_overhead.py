"""`edgecv run` loop overhead vs a bare InferenceSession.run on a ready tensor, measured in one run.

python tools/loop_overhead.py BUNDLE [--frames 150] [--rounds 8] [--resize auto|area|fast]
    [--size 340x256,640x480] [--clip FILE | --noise] [--decode-threads N] [--json]

Ratio = mean(preprocess + infer + postprocess per frame in the loop) / mean(bare session.run), with the
loop and the bare call alternated in ``--rounds`` blocks so that a slow phase of the machine lands on both.

The clip: by default a slow pan across real photos (the shared ImageNet samples), one clip per ``--size``:
a camera stand-in whose frames compress like camera frames. The default sizes are the model's resize size
(what a camera pipeline that scales in hardware delivers, e.g. ``edgecv run --source csi://N`` on a Jetson)
and VGA, which the CPU has to resize. (340, not 341: the mp4 writer rounds widths down to even; the
shorter side stays 256, so no resize is needed.) ``--noise`` uses random
frames instead (the worst case for the decoder: several times the bitstream and decode time).

It also splits the overhead: ``bare_with_gap`` runs the same bare call after an idle busy-wait as long as
the loop's non-inference time per frame, which shows what merely not calling ``run`` back to back costs
(ORT's worker threads stop spinning, caches cool) before any preprocessing touches memory.
"""
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edgecv.bundle.reader import open_bundle
from edgecv.runtime.latency import measure_interleaved
from edgecv.runtime.stream.loop import run

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-samples"


def noise_clip(frames: int, width: int, height: int) -> Path:
    """A temporary mp4 of random frames."""
    vid = Path(tempfile.mkdtemp()) / "noise.mp4"
    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"mp4v"), 30, (width, height))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        w.write(rng.integers(0, 255, (height, width, 3), np.uint8))
    w.release()
    return vid


def photo_clip(width: int, height: int, photos: int = 12, frames_per_photo: int = 25) -> Path:
    """A temporary mp4 that pans slowly across real photos (each scaled 1.25x the frame, then panned)."""
    files = sorted(p for p in PHOTOS.glob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:photos]
    if not files:
        raise SystemExit(f"{PHOTOS}: no photos for the clip; pass --clip FILE or --noise")
    vid = Path(tempfile.mkdtemp()) / "photos.mp4"
    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"mp4v"), 30, (width, height))
    big_w, big_h = int(width * 1.25), int(height * 1.25)
    for f in files:
        img = cv2.resize(cv2.imread(str(f), cv2.IMREAD_COLOR), (big_w, big_h), interpolation=cv2.INTER_AREA)
        for k in range(frames_per_photo):
            y = (big_h - height) * k // frames_per_photo
            x = (big_w - width) * k // frames_per_photo
            w.write(np.ascontiguousarray(img[y:y + height, x:x + width]))
    w.release()
    return vid


def clip_size(text: str) -> tuple:
    """(width, height) from 'WxH'; ValueError when it is not two integers."""
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def resize_used(pre, mode: str, frame_size: str) -> str:
    """``auto`` resolved for this frame size (what the loop actually ran)."""
    w, h = clip_size(frame_size)
    if pre.resized_size(h, w) == (h, w):
        return "none"
    return pre.mode_for(h, w) if mode != "auto" else f"auto:{pre.mode_for(h, w)}"


def measure(bundle: str, sess, vid: Path, a) -> dict:
    """Alternate ``a.rounds`` blocks of bare runs and loop runs on ``vid``; one result row."""
    name = sess.get_inputs()[0].name
    shape = [1] + [int(d) for d in sess.get_inputs()[0].shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    def bare_block(warmup: int) -> float:
        return measure_interleaved({"bare": lambda: sess.run(None, {name: x})}, warmup=warmup, iters=a.frames,
                                   rounds=1)["bare"]["mean_ms"]

    bares, loops, stage_rounds = [], [], []
    for r in range(a.rounds):
        bares.append(bare_block(20 if r == 0 else 5))
        s = run(bundle, str(vid), "onnxruntime", loop=True, max_frames=a.frames, threads=a.threads,
                emit=lambda _: None, resize=a.resize, decode_threads=a.decode_threads)
        loops.append(s["latency_ms"]["pre_infer_post"]["mean_ms"])
        stage_rounds.append({k: v["mean_ms"] for k, v in s["latency_ms"].items()})
    bares.append(bare_block(5))
    bare, loop = float(np.mean(bares)), float(np.mean(loops))
    stages = {k: float(np.mean([st[k] for st in stage_rounds])) for k in stage_rounds[0]}
    gap_s = (loop - stages["infer"] + stages["capture_wait"]) / 1e3

    def gap_then_run() -> float:
        t = time.perf_counter()
        while time.perf_counter() - t < gap_s:
            pass
        t = time.perf_counter()
        sess.run(None, {name: x})
        return time.perf_counter() - t

    gapped = float(np.mean([gap_then_run() for _ in range(a.frames)][20:])) * 1e3
    return {"bare_run_mean_ms": bare, "bare_rounds_ms": bares, "loop_pre_infer_post_mean_ms": loop,
            "loop_rounds_ms": loops, "ratio": loop / bare,
            "ratio_per_round": [lp / ((b0 + b1) / 2) for lp, b0, b1 in zip(loops, bares, bares[1:])],
            "stages_mean_ms": stages, "bare_with_gap_mean_ms": gapped,
            "infer_in_loop_vs_bare": stages["infer"] / bare, "bare_with_gap_vs_bare": gapped / bare}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--frames", type=int, default=150, help="frames per round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resize", choices=["auto", "area", "fast"], default="auto")
    ap.add_argument("--size", default="340x256,640x480",
                    help="clip frame sizes WxH, comma-separated: by default the model's resize size (what a camera "
                         "scaling in hardware delivers; mp4 widths are even) and VGA (resized on the CPU)")
    ap.add_argument("--clip", help="a video file to use instead of the generated ones")
    ap.add_argument("--noise", action="store_true", help="random frames instead of panned photos")
    ap.add_argument("--decode-threads", type=int, default=None, help="FFmpeg decoder threads (default: edgecv run's)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    a = ap.parse_args()
    try:
        sizes = [clip_size(size) for size in a.size.split(",")]
        if min(min(wh) for wh in sizes) <= 0:
            raise ValueError(a.size)
    except ValueError:
        ap.error(f"--size: expected WxH[,WxH...] with positive sizes, got {a.size!r}")
    if a.clip and not Path(a.clip).is_file():
        ap.error(f"--clip: {a.clip}: no such file")
    import onnxruntime as ort

    from edgecv.runtime.backends.ort import DISABLED_OPTIMIZERS, session_options
    from edgecv.runtime.preprocess import Preprocessor

    bundle = open_bundle(a.bundle)
    pre = Preprocessor(bundle.preprocess, a.resize)
    art = bundle.artifact("onnxruntime")
    sess = ort.InferenceSession(str(bundle.path(art["file"])), session_options(a.threads),
                                providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS)
    rows = []
    for size in ([None] if a.clip else sizes):
        if a.clip:
            vid = Path(a.clip)
        else:
            width, height = size
            vid = noise_clip(100, width, height) if a.noise else photo_clip(width, height)
        try:
            cap = cv2.VideoCapture(str(vid))
            frame_size = f"{int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}"
            cap.release()
            rows.append({"artifact": art["file"], "clip": "file" if a.clip else "noise" if a.noise else "photos",
                         "frame_size": frame_size, "resize": resize_used(pre, a.resize, frame_size),
                         "threads": a.threads, "rounds": a.rounds,
                         "frames_per_round": a.frames, **measure(a.bundle, sess, vid, a)})
        finally:
            if not a.clip:
                shutil.rmtree(vid.parent, ignore_errors=True)  # the temporary clip's own folder
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'frames':>9} {'resize':>9} {'bare ms':>8} {'loop ms':>8} {'ratio':>7} {'pre':>6} {'infer':>6} "
          f"{'post':>6} {'decode':>6} {'infer/bare':>10}  ratio per round")
    for r in rows:
        st = r["stages_mean_ms"]
        print(f"{r['frame_size']:>9} {r['resize']:>9} {r['bare_run_mean_ms']:8.3f} {r['loop_pre_infer_post_mean_ms']:8.3f} "
              f"{r['ratio']:6.3f}x {st['preprocess']:6.3f} {st['infer']:6.3f} {st['postprocess']:6.3f} "
              f"{st['capture_wait']:6.3f} {r['infer_in_loop_vs_bare']:9.3f}x  "
              f"{' '.join(f'{v:.2f}' for v in r['ratio_per_round'])}")


if __name__ == "__main__":
    main()
