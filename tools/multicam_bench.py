"""Several cameras: the batched multi-source loop against separate single-source processes, measured in one run.

    python tools/multicam_bench.py out/lite0 [--sizes resize,640x480] [--max-cams 8] [--seconds 6]

1. Real time: N cameras replayed with ``--realtime`` at 30 fps each (N = 1, 2, 4, ...). A configuration is
   sustained when every camera has p99 frame age <= 100 ms, no stale frame (``--max-age 100``) and at most 2%
   of its frames dropped. The table gives the largest N sustained by the batched loop (one process, one engine
   call per round) and by N separate single-source processes.
2. Unpaced: aggregate classified frames/s of the 4-source loop, of 4 separate processes at once, and of 4
   single-source runs one after another (600 frames per camera, each loop's own timing, so process start-up
   is not counted); and ``edgecv bench`` at batch 4 vs batch 1 (what batching gives the engine alone here).
3. The engine-only estimate: two one-thread engines at batch 4 against two at batch 1 (the loop's workers against
   separate processes, engine only), diluted by the per-frame decode and preprocessing both pay: what the batched
   loop would gain over separate processes if the engine calls were all that differed. An estimate, not a bound:
   separate processes pay more than it counts (four processes time-sharing two cores).
4. Core time per frame, batched loop and separate processes, from the difference between a short and a long
   unpaced run (process start-up and model loading cancel out), with how many cores each kept busy; and the
   ceiling: separate processes' core time per frame over the least any loop pays here (a one-thread engine at
   batch 4 plus decode and preprocessing), i.e. what the batched loop would reach with no overhead of its own.
5. Common window: the unpaced runs of step 2, counted from their JSON lines' capture times over the window in
   which every loop is classifying (the latest first frame to the earliest last frame): each side's aggregate
   frames/s with no start-up, tail or teardown in it. (Measured within 1% of the sum of separate processes' own
   rates, 2026-11-28: their staggered start-up does not inflate that sum.)

Every number is a ratio against a baseline measured in the same run. Clips pan slowly across the shared
ImageNet photos (tools/loop_overhead.photo_clip).
"""
import argparse
import contextlib
import json
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_overhead import clip_size, photo_clip  # noqa: E402

EDGECV = [sys.executable, "-m", "edgecv"]


_CHILDREN: list = []  # every loop this benchmark started: stopped if it is interrupted or terminated


def _start(cmd, **kw) -> subprocess.Popen:
    p = subprocess.Popen(cmd, **kw)
    _CHILDREN.append(p)
    return p


def _stop_children() -> None:
    """SIGINT to every loop still running (a real-time replay loops until told), then kill what outlives 10 s."""
    alive = [p for p in _CHILDREN if p.poll() is None]
    for p in alive:
        p.send_signal(signal.SIGINT)
    for p in alive:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _summary(stderr: str) -> dict:
    return json.loads(next(line for line in reversed(stderr.splitlines()) if line.startswith('{"summary"')))["summary"]


def _sustained(cams) -> bool:
    for c in cams:
        offered = c["frames"] + c["dropped"] + c["stale"]
        if not c["frames"] or c["stale"] or c["age_ms"]["p99_ms"] > 100 or c["dropped"] > 0.02 * offered:
            return False
    return True


def realtime_batched(bundle, clip, n, seconds):
    args = [*EDGECV, "run", bundle, "--realtime", "--loop", "--json", "--max-age", "100"]
    for _ in range(n):
        args += ["--source", str(clip)]
    p = _start(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    p.send_signal(2)
    s = _summary(p.communicate(timeout=60)[1])
    if "cameras" not in s:  # one source runs the single-camera loop
        return [_one(s)], s
    return list(s["cameras"].values()), s


def _one(s: dict) -> dict:
    return {"frames": s["frames"], "dropped": s["dropped"], "stale": s["stale"],
            "age_ms": s["age_ms"] or {"p99_ms": float("inf")}}


def realtime_separate(bundle, clip, n, seconds):
    procs = [_start([*EDGECV, "run", bundle, "--source", str(clip), "--realtime", "--loop", "--json",
                               "--max-age", "100", "--threads", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    time.sleep(seconds)
    cams = []
    for p in procs:
        p.send_signal(2)
    for p in procs:
        cams.append(_one(_summary(p.communicate(timeout=60)[1])))
    return cams


def batched_cmd(bundle, clip, n: int, frames: int) -> list:
    """One unpaced n-source loop, ``frames`` per camera."""
    return [*EDGECV, "run", bundle, "--json", "--loop", "--max-frames", str(n * frames)] + ["--source", str(clip)] * n


def single_cmd(bundle, clip, frames: int, one_thread: bool = False) -> list:
    """One unpaced single-source loop (``one_thread``: as one of several separate processes)."""
    cmd = [*EDGECV, "run", bundle, "--source", str(clip), "--json", "--loop", "--max-frames", str(frames)]
    return cmd + ["--threads", "1"] if one_thread else cmd


def common_window_fps(line_files) -> Optional[float]:
    """Frames/s of several loops together over the window in which all of them were classifying (from the latest
    first capture time to the earliest last one), counted from their JSON lines; None if they never overlapped."""
    stamps = []
    for f in line_files:
        with open(f) as fh:
            stamps.append([json.loads(line)["capture_time"] for line in fh if line.startswith("{")])
    if not all(stamps):
        return None
    lo, hi = max(min(t) for t in stamps), min(max(t) for t in stamps)
    if hi <= lo:
        return None
    return sum(lo <= x <= hi for t in stamps for x in t) / (hi - lo)


def unpaced(bundle, clip, n=4, frames=600):
    """Aggregate frames/s of the loops themselves (each loop's own timing: process start-up is not counted), and
    over the window in which every loop is classifying (``common_window_fps``)."""
    with tempfile.TemporaryDirectory() as tmp:
        lines = [Path(tmp) / f"{k}.jsonl" for k in range(n + 1)]
        with open(lines[n], "w") as out:
            r = subprocess.run(batched_cmd(bundle, clip, n, frames), stdout=out, stderr=subprocess.PIPE, text=True)
        batched = _summary(r.stderr)["fps"]
        with contextlib.ExitStack() as files:
            outs = [files.enter_context(open(f, "w")) for f in lines[:n]]
            procs = [_start(single_cmd(bundle, clip, frames, True), stdout=o, stderr=subprocess.PIPE, text=True)
                     for o in outs]
            separate = sum(_summary(p.communicate()[1])["fps"] for p in procs)  # they run side by side
        window = {"batched_window_fps": common_window_fps(lines[n:]), "separate_window_fps": common_window_fps(lines[:n])}
    one = single_cmd(bundle, clip, frames)
    runs = [_summary(subprocess.run(one, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).stderr)
            for _ in range(n)]
    sequential = sum(s["frames"] for s in runs) / sum(s["frames"] / s["fps"] for s in runs)
    b = json.loads(subprocess.run([*EDGECV, "bench", bundle, "--batch", "1,4", "--iters", "200", "--json"],
                                  capture_output=True, text=True).stdout)
    engine = b["batches"]["4"]["throughput"] / b["batches"]["1"]["throughput"]
    res = {"batched_fps": batched, "separate_fps": separate, "sequential_fps": sequential,
           "vs_best_other": batched / max(separate, sequential), "engine_batch4_vs_batch1": engine, **window}
    if window["batched_window_fps"] and window["separate_window_fps"]:
        res["window_vs_separate"] = window["batched_window_fps"] / window["separate_window_fps"]
    res.update(engine_estimate(bundle, clip))
    least = res["cores"] * 1e3 / res["engine_workers_b4_fps"] + res["decode_preprocess_ms"]
    res["least_core_ms_per_frame"] = least
    ct = core_time(bundle, clip, n, (frames, 3 * frames))
    res.update(ct)
    if ct:
        res["ceiling_vs_separate"] = res["separate_core_ms_per_frame"] / least
    return res


def _cpu_and_wall(cmds) -> tuple:
    """Run ``cmds`` side by side; (wall seconds, core seconds of all of them)."""
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    ps = [_start(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in cmds]
    if any(p.wait() != 0 for p in ps):
        raise SystemExit(f"{' '.join(map(str, cmds[0]))}: failed")
    wall, r1 = time.monotonic() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def core_time(bundle, clip, n=4, frames=(600, 1800)) -> dict:
    """Marginal core-milliseconds per frame and busy cores of the n-source loop and of n separate processes:
    the difference between runs of ``frames[0]`` and ``frames[1]`` frames per camera, so start-up cancels."""
    def batched(k):
        return [batched_cmd(bundle, clip, n, k)]

    def separate(k):
        return [single_cmd(bundle, clip, k, True)] * n

    out = {}
    for name, cmds in (("batched", batched), ("separate", separate)):
        (w0, c0), (w1, c1) = (_cpu_and_wall(cmds(k)) for k in frames)
        d = n * (frames[1] - frames[0])
        if w1 <= w0 or c1 <= c0:  # start-up noise larger than the extra frames' work
            print(f"core time ({name}): the runs are too short to tell apart; use more --frames", file=sys.stderr)
            return {}
        out[f"{name}_core_ms_per_frame"] = (c1 - c0) * 1e3 / d
        out[f"{name}_busy_cores"] = (c1 - c0) / (w1 - w0)
    return out


def _engine_fps(bundle, batch: int, procs: int) -> float:
    """Frames/s of ``procs`` one-thread engine instances at once (one per core), each at ``batch``."""
    cmd = [*EDGECV, "bench", bundle, "--batch", str(batch), "--threads", "1", "--iters", str(max(50, 400 // batch)),
           "--json"]
    ps = [_start(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(procs)]
    return sum(json.loads(p.communicate()[0])["batches"][str(batch)]["throughput"] for p in ps)


def decode_preprocess_ms(bundle, clip, frames: int = 300) -> float:
    """One core's time per frame to decode the clip and preprocess it on the CPU path: what every loop pays,
    batched or not."""
    import cv2
    import numpy as np

    from edgecv.bundle.reader import open_bundle
    from edgecv.runtime.preprocess import Preprocessor

    cv2.setNumThreads(1)
    pre = Preprocessor(open_bundle(bundle).preprocess)
    cap = cv2.VideoCapture(str(clip))
    out = np.empty((pre.channels, pre.crop, pre.crop), np.float32)
    n, t0 = 0, time.thread_time()
    while n < frames:
        ok, frame = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        pre(frame, out)
        n += 1
    cap.release()
    return (time.thread_time() - t0) * 1e3 / n


def engine_estimate(bundle, clip, cores: int = 2) -> dict:
    """What the batched loop would gain over separate processes if only the engine calls differed: one one-thread
    engine per core at batch 4 (what each of the loop's workers runs with 4 cameras) against one per core at
    batch 1 (separate processes), each frame also paying the same decode and preprocessing."""
    b1, b4 = _engine_fps(bundle, 1, cores), _engine_fps(bundle, 4, cores)
    c = decode_preprocess_ms(bundle, clip)
    e1, e4 = cores * 1e3 / b1, cores * 1e3 / b4  # core-milliseconds per frame
    return {"cores": cores, "engine_workers_b1_fps": b1, "engine_workers_b4_fps": b4, "decode_preprocess_ms": c,
            "engine_estimate_vs_separate": (e1 + c) / (e4 + c)}


def max_cameras(trial, max_cams: int, label: str):
    """(the largest N sustained, every trial's numbers): ``trial(N)`` for N = 1, 2, 4, 6, ... up to ``max_cams``,
    stopping at the first N not sustained."""
    best, n, trials = 0, 1, {}
    while n <= max_cams:
        cams = trial(n)
        ok = _sustained(cams)
        trials[n] = {"sustained": ok, "p99_age_ms": max(c["age_ms"]["p99_ms"] for c in cams),
                     "dropped": sum(c["dropped"] for c in cams), "stale": sum(c["stale"] for c in cams)}
        print(f"{label} N={n}: {trials[n]}", flush=True)
        if not ok:
            break
        best = n
        n = n * 2 if n < 4 else n + 2
    return best, trials


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: not a number") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be above 0")
        return v
    return parse


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--sizes", default="resize,640x480", help="Comma list: 'resize' (the model's resize size) or WxH.")
    ap.add_argument("--max-cams", type=_positive(int), default=8)
    ap.add_argument("--seconds", type=_positive(float), default=6.0, help="Real-time trial length per configuration.")
    ap.add_argument("--frames", type=_positive(int), default=600, help="Unpaced frames per camera (the long core-time run: 3x).")
    ap.add_argument("--json", dest="json_out", default=None, help="Also write the results here.")
    a = ap.parse_args()
    from edgecv.bundle.reader import open_bundle
    from edgecv.errors import BundleError
    from edgecv.runtime.preprocess import Preprocessor

    try:
        pre = Preprocessor(open_bundle(a.bundle).preprocess)
    except BundleError as e:
        raise SystemExit(f"error: {e}") from None
    results = []
    for size in a.sizes.split(","):
        if size == "resize":
            h, w = pre.resized_size(480, 640)
            w -= w % 2  # mp4 widths are even
        else:
            try:
                w, h = clip_size(size)
            except ValueError:
                raise SystemExit(f"error: --sizes: {size!r} is neither 'resize' nor WxH") from None
            if not (16 <= w <= 7680 and 16 <= h <= 4320) or w % 2:
                raise SystemExit(f"error: --sizes: {size!r}: width and height 16-7680 x 16-4320, width even (mp4)")
        clip = photo_clip(w, h)
        try:
            row = {"frames": f"{w}x{h}"}
            for mode, fn in (("batched", lambda n, c=clip: realtime_batched(a.bundle, c, n, a.seconds)[0]),
                             ("separate", lambda n, c=clip: realtime_separate(a.bundle, c, n, a.seconds))):
                row[f"{mode}_max_cams"], row[f"{mode}_trials"] = max_cameras(fn, a.max_cams, f"{w}x{h} {mode:8s}")
            row["unpaced"] = unpaced(a.bundle, clip, frames=a.frames)
            print(f"{w}x{h} unpaced: {row['unpaced']}", flush=True)
            results.append(row)
        finally:
            shutil.rmtree(clip.parent, ignore_errors=True)  # the temporary clip's own folder
    print("\n| frames | cameras at 30 fps: batched | separate processes | unpaced 4 cams: batched fps | separate | "
          "sequential | batched vs best other | engine batch 4 vs 1 | 2 one-thread engines, b4 vs b1 | "
          "decode + preprocess ms/frame | engine-only estimate vs separate | core-ms/frame batched / separate "
          "(busy cores) | least core-ms/frame (b4 engine + decode) | ceiling vs separate | "
          "common window: batched / separate fps |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        u = r["unpaced"]
        window = (f"{u['batched_window_fps']:.0f} / {u['separate_window_fps']:.0f} ({u['window_vs_separate']:.2f}x)"
                  if "window_vs_separate" in u else "n/a")
        print(f"| {r['frames']} | {r['batched_max_cams']} | {r['separate_max_cams']} | {u['batched_fps']:.0f} | "
              f"{u['separate_fps']:.0f} | {u['sequential_fps']:.0f} | {u['vs_best_other']:.2f}x | "
              f"{u['engine_batch4_vs_batch1']:.2f}x | {u['engine_workers_b4_fps'] / u['engine_workers_b1_fps']:.2f}x | "
              f"{u['decode_preprocess_ms']:.2f} | {u['engine_estimate_vs_separate']:.2f}x | " + (
                  f"{u['batched_core_ms_per_frame']:.2f} ({u['batched_busy_cores']:.2f}) / "
                  f"{u['separate_core_ms_per_frame']:.2f} ({u['separate_busy_cores']:.2f}) | "
                  f"{u['least_core_ms_per_frame']:.2f} | {u['ceiling_vs_separate']:.2f}x | {window} |"
                  if "ceiling_vs_separate" in u else f"n/a | {u['least_core_ms_per_frame']:.2f} | n/a | {window} |"))
    if a.json_out:
        from edgecv.utils.io import atomic_write_json

        atomic_write_json(a.json_out, results)


def _terminated(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)  # SIGTERM as Ctrl-C: the temporary clip is removed, the loops stopped
    try:
        main()
    except KeyboardInterrupt:
        _stop_children()
        raise SystemExit("interrupted") from None
