"""``edgecv run BUNDLE --source A --source B ...``: several cameras, one engine call per batch.

One capture thread per camera keeps its newest frame (live cameras and ``--realtime`` replays drop what the
model had no time for, as a camera would; unpaced files and folders hand over every frame). One inference
loop batches the frames available, one per camera, into a single engine call, the way DeepStream's
nvstreammux does: it waits for every live camera's next frame at most a push timeout (1/fps) after the first
one arrived, then runs what it has. JSON lines carry the camera id, its frame number, the capture time, the
frame's age at inference and the latency; the summary has per-camera frames, drops, stale frames,
reconnects and p50/p99 age. One camera's failure never stops the others.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import cv2
import numpy as np

from edgecv.runtime.latency import percentiles
from edgecv.runtime.run_loop import RunOptions, Smoother, select_gpu_preprocess, softmax, top_k, top_k_softmax, warm_up
from edgecv.runtime.sources import FrameSource, SourceFailed
from edgecv.utils.signals import INTERRUPTS, Terminated


@dataclass
class Camera:
    id: str
    source: str
    loop: Optional[bool] = None
    realtime: Optional[bool] = None
    fps: Optional[float] = None


def load_cameras(path: str) -> List[Camera]:
    """A camera list (YAML): ``cameras: [{id: front, source: csi://0, realtime: false, fps: 30}, ...]``."""
    from edgecv.recipe import RecipeError, read_yaml_mapping

    raw = read_yaml_mapping(Path(path), "camera list")
    cams = raw.get("cameras")
    if not isinstance(cams, list) or not cams:
        raise RecipeError(f"{path}: expected 'cameras:' with a list of {{id, source}}")
    out, ids = [], set()
    allowed = {f.name for f in dataclasses.fields(Camera)}
    for i, c in enumerate(cams):
        if not isinstance(c, dict) or not isinstance(c.get("source"), str):
            raise RecipeError(f"{path}: cameras[{i}]: expected a mapping with a 'source' string")
        unknown = set(c) - allowed
        if unknown:
            raise RecipeError(f"{path}: cameras[{i}]: unknown key(s) {', '.join(sorted(unknown))}")
        cam = Camera(**{"id": str(c.get("id", f"cam{i}")), **{k: v for k, v in c.items() if k != "id"}})
        if cam.id in ids:
            raise RecipeError(f"{path}: cameras[{i}]: id {cam.id!r} appears twice")
        ids.add(cam.id)
        out.append(cam)
    return out


class CameraThread(threading.Thread):
    """Reads and preprocesses one camera; ``take`` hands out its newest input tensor once.

    Preprocessing runs here, beside decoding, so it overlaps the engine call of the inference loop (OpenCV
    releases the GIL): the inference loop only copies each tensor into its batch.
    """

    def __init__(self, cam: Camera, src: FrameSource, wake: threading.Condition, pre):
        super().__init__(daemon=True, name=f"camera {cam.id}")
        self.cam, self.src, self.wake, self.pre = cam, src, wake, pre
        self.blocking = not src.live  # an unpaced file or folder hands over every frame
        self.latest = None  # (frame, capture time)
        self.seq = self.taken = self.dropped = 0
        self.error: Optional[str] = None
        self.done = False
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for frame in self.src.frames():
                tensor = self.pre(frame)
                with self.wake:
                    while self.blocking and self.latest is not None and not self.stop.is_set():
                        self.wake.wait(0.1)
                    if self.stop.is_set():
                        break
                    if self.latest is not None:
                        self.dropped += 1  # replaced before the model took it
                    self.latest = (tensor, self.src.frame_time)
                    self.seq += 1
                    self.wake.notify_all()
        except SourceFailed as e:
            self.error = str(e)
        finally:
            with self.wake:
                self.done = True
                self.wake.notify_all()

    def take(self):
        item, self.latest = self.latest, None
        if item is not None:
            self.taken += 1
            self.wake.notify_all()
        return item


def _keep_frame(frame):
    return frame


def run_multi(target, cameras: List[Camera], options: Optional[RunOptions] = None,
              emit: Optional[Callable[[str], None]] = None) -> Dict:
    """Classify several cameras with one batched engine call per round; returns the summary."""
    from edgecv.runtime.bundle import open_bundle
    from edgecv.runtime.notify import Notifier
    from edgecv.runtime.preprocess import Preprocessor
    from edgecv.runtime.select import open_backend

    o = options or RunOptions()
    if o.record or o.display:
        raise ValueError("--record and --display take one source")
    emit = emit or (lambda s: print(s, flush=True))
    bundle = open_bundle(target)
    labels = bundle.labels
    pre = Preprocessor(bundle.preprocess, o.resize)
    be, info = open_backend(bundle, o.backend, o.precision, threads=o.threads, dla_core=o.dla_core)
    n_max = min(len(cameras), be.max_batch or len(cameras))
    try:
        # on the GPU, the camera threads hand over decoded frames and the kernel writes each into its batch row
        gpu_pre = select_gpu_preprocess(be, pre, o.gpu_preprocess)
    except BaseException:
        be.close()
        raise
    x = np.empty((n_max, pre.channels, pre.crop, pre.crop), np.float32)
    try:
        warm_up(be, x, n_max)  # every batch size a round can have, before the cameras start
    except BaseException:
        be.close()
        raise
    notifier = Notifier()
    wake = threading.Condition()
    threads: List[CameraThread] = []
    try:
        for cam in cameras:
            src = FrameSource(cam.source, loop=o.loop if cam.loop is None else cam.loop,
                              realtime=o.realtime if cam.realtime is None else cam.realtime,
                              max_failures=o.max_failures, decode_threads=o.decode_threads or 1,
                              open_timeout_s=o.open_timeout_s, read_timeout_s=o.read_timeout_s,
                              fps=cam.fps or o.fps, heartbeat=notifier.ping)
            threads.append(CameraThread(cam, src, wake, _keep_frame if gpu_pre is not None
                                        else Preprocessor(bundle.preprocess, o.resize)))
    except BaseException:
        be.close()
        raise
    cv_threads = cv2.getNumThreads()
    if be.runs_on_cpu:
        cv2.setNumThreads(1)
    push_timeout = 1.0 / (o.fps or 30.0)
    stats = {c.id: {"frames": 0, "stale": 0, "unknown": 0, "ages": []} for c in cameras}
    smoothers = {c.id: Smoother(o.smooth) for c in cameras}
    batches: List[int] = []
    lat: List[float] = []
    wall_offset = time.time() - time.monotonic()
    total = 0
    interrupted = None
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    try:
        while o.max_frames is None or total < o.max_frames:
            with wake:
                # wait for a first frame (in short steps: Ctrl-C stays responsive)
                while not any(t.latest is not None for t in threads) and not all(t.done for t in threads):
                    wake.wait(0.1)
                if all(t.done for t in threads) and not any(t.latest is not None for t in threads):
                    break
                # nvstreammux: every camera that is still delivering gets up to the push timeout to join
                deadline = time.monotonic() + push_timeout
                while time.monotonic() < deadline and not all(t.latest is not None or t.done for t in threads):
                    wake.wait(max(0.0, deadline - time.monotonic()))
                taken = []
                for t in threads:
                    if len(taken) == n_max:
                        break
                    item = t.take()
                    if item is not None:
                        taken.append((t, item))
            now = time.monotonic()
            rows = []
            for t, (tensor, stamp) in taken:
                age = (now - stamp) * 1e3
                if o.max_age_ms is not None and age > o.max_age_ms:
                    stats[t.cam.id]["stale"] += 1
                    continue
                if gpu_pre is not None:
                    gpu_pre(tensor, len(rows))  # a decoded frame: resized and normalised on the GPU
                else:
                    x[len(rows)] = tensor
                rows.append((t, stamp, age))
            if not rows:
                notifier.ping()
                continue
            t0 = time.perf_counter()
            logits = be.infer_device(len(rows)) if gpu_pre is not None else be.infer(x[: len(rows)])
            ms = (time.perf_counter() - t0) * 1e3
            notifier.ping()
            batches.append(len(rows))
            lat.append(ms)
            for i, (t, stamp, age) in enumerate(rows):
                st = stats[t.cam.id]
                if o.smooth > 1:
                    probs = smoothers[t.cam.id](softmax(logits[i]))
                    top = top_k(probs, o.topk)
                    scores = probs[top]
                else:
                    top, scores = top_k_softmax(logits[i], o.topk)
                idx = int(top[0])
                label = labels[idx] if idx < len(labels) else str(idx)
                if o.min_score is not None and scores[0] < o.min_score:
                    idx, label = -1, "unknown"
                    st["unknown"] += 1
                st["ages"].append(age)
                if o.as_json:
                    emit(json.dumps({"camera": t.cam.id, "frame": st["frames"], "label": label, "index": idx,
                                     "score": float(scores[0]), "capture_time": round(stamp + wall_offset, 6),
                                     "age_ms": round(age, 3), "batch": len(rows), "latency_ms": round(ms, 4)}))
                st["frames"] += 1
                total += 1
            notifier.ready(f"classifying {len(cameras)} cameras")
    except INTERRUPTS as e:
        interrupted = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
    finally:
        for t in threads:
            t.stop.set()
        with wake:
            wake.notify_all()
        for t in threads:
            t.join(timeout=3)
            t.src.close()
        cv2.setNumThreads(cv_threads)
        notifier.stopping()
        notifier.close()
        be.close()
    elapsed = time.perf_counter() - t_start
    per_cam = {}
    for t in threads:
        st = stats[t.cam.id]
        per_cam[t.cam.id] = {"source": t.cam.source, "frames": st["frames"], "dropped": t.dropped + t.src.dropped,
                             "stale": st["stale"], "unknown": st["unknown"], "reconnects": t.src.reconnects,
                             "skipped": t.src.skipped, "error": t.error,
                             "age_ms": percentiles(st["ages"]) if st["ages"] else None}
    errors = [f"{c}: {v['error']}" for c, v in per_cam.items() if v["error"]]
    return {"frames": total, "fps": total / elapsed if elapsed else 0.0, "cameras": per_cam,
            "batches": len(batches), "mean_batch": float(np.mean(batches)) if batches else 0.0,
            "backend": info["backend"], "artifact": info["file"], "precision": info.get("precision"),
            "preprocess": "gpu" if gpu_pre is not None else "cpu",
            "interrupted": interrupted, "error": "; ".join(errors) if errors and len(errors) == len(threads) else None,
            "camera_errors": errors, "latency_ms": {"infer_batch": percentiles(lat)} if lat else {},
            "dropped": sum(v["dropped"] for v in per_cam.values()),
            "stale": sum(v["stale"] for v in per_cam.values()),
            "reconnects": sum(v["reconnects"] for v in per_cam.values())}

