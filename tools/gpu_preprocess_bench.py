"""Per-frame cost of preprocessing on the CPU path against the GPU kernel (edgecv.runtime.tensorrt.gpu_preprocess), measured
in one run on a machine with a CUDA device.

For each frame size: the CPU path (``Preprocessor``, resize mode ``auto``; OpenCV on 1 thread and on its default
thread count) against the GPU path's host time (the call that copies the decoded frame up and launches the kernel)
and its time to a finished result (call + stream synchronize). The claim checked is the issue's: with GPU
preprocessing the CPU's per-frame work is the decode and one copy. Ratios are against the CPU path in the same run.

    python tools/gpu_preprocess_bench.py [--iters 200] [--json out.json]
"""
import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPEC = {"input_size": 224, "resize": 256, "crop": 224, "channels": 3, "scale": 1 / 255,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
SIZES = [(480, 640), (720, 1280), (1080, 1920)]


def median_ms(fn, iters):
    """p50 of ``iters`` timed calls after 10 untimed ones (edgecv's own latency measurement)."""
    from edgecv.runtime.latency import measure_interleaved

    return measure_interleaved({"fn": fn}, warmup=10, iters=iters, rounds=1)["fn"]["p50_ms"]


def measure(pre, gp, mem, frame, iters, default_threads):
    """One row of the table for one decoded frame."""
    h, w = frame.shape[:2]
    out = np.empty((3, 224, 224), np.float32)
    cv2.setNumThreads(1)
    cpu1 = median_ms(lambda: pre(frame, out), iters)
    cv2.setNumThreads(default_threads)
    cpun = median_ms(lambda: pre(frame, out), iters)
    enqueue = median_ms(lambda: gp(frame, 0), iters)
    mem.synchronize()
    done = median_ms(lambda: (gp(frame, 0), mem.synchronize()), iters)
    jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
    decode = median_ms(lambda: cv2.imdecode(jpg, cv2.IMREAD_COLOR), iters)  # what the CPU keeps doing
    return {"frame": f"{w}x{h}", "cpu_1thread_ms": cpu1, f"cpu_{default_threads}threads_ms": cpun,
            "gpu_host_enqueue_ms": enqueue, "gpu_to_result_ms": done, "jpeg_decode_ms": decode,
            "cpu1_over_gpu_host": cpu1 / enqueue}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    from edgecv.errors import DeviceError
    from edgecv.runtime.preprocess import Preprocessor
    from edgecv.runtime.tensorrt.cuda_mem import open_cuda_mem
    from edgecv.runtime.tensorrt.gpu_preprocess import GpuPreprocessor

    pre = Preprocessor(SPEC)
    try:
        mem = open_cuda_mem("cuda-python")
    except DeviceError as e:
        sys.exit(f"gpu_preprocess_bench: needs a CUDA device: {e}")
    dev = mem.device_alloc(4 * 3 * 224 * 224 * 4)
    gp = GpuPreprocessor(pre, mem, dev, 4)
    rng = np.random.default_rng(0)
    rows = []
    default_threads = cv2.getNumThreads()
    for h, w in SIZES:
        frame = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), np.uint8), (0, 0), 2)
        rows.append(measure(pre, gp, mem, frame, a.iters, default_threads))
    gp.close()
    mem.close()
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    if a.json:
        from edgecv.utils.io import atomic_write_json

        atomic_write_json(a.json, rows)


if __name__ == "__main__":
    main()
