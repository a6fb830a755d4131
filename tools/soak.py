"""Soak: run the camera loop on a looping file source for N frames; report resident-memory growth.

python tools/soak.py BUNDLE [--frames 10000]
RSS is sampled in the same run after 500 frames (allocator and session arenas settle) and at the end.
"""
import argparse
import json
import resource
from pathlib import Path

from loop_overhead import noise_clip

from edgecv.runtime.stream.loop import run


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--frames", type=int, default=10000)
    a = ap.parse_args()
    vid = noise_clip(120, 320, 240)
    samples = {"n": 0}

    def emit(line):  # one JSON line per frame: sample RSS at frame 500 (warm) and at the end
        samples["n"] += 1
        if samples["n"] == 500:
            samples["before"] = rss_mb()

    s = run(a.bundle, str(vid), "onnxruntime", loop=True, max_frames=a.frames, as_json=True, emit=emit)
    before, after = samples["before"], rss_mb()
    print(json.dumps({"frames": s["frames"], "fps": s["fps"], "rss_before_mb": before, "rss_after_mb": after,
                      "growth_mb": after - before, "error": s["error"]}, indent=2))
