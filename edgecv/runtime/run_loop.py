"""``edgecv run``: the camera classification loop (capture -> preprocess -> infer -> top-k -> outputs)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from edgecv.errors import OutputError
from edgecv.metrics import softmax, top_k, top_k_softmax
from edgecv.runtime.latency import percentiles
from edgecv.runtime.preprocess import Preprocessor
from edgecv.runtime.sources import CSI_SIZE, OPEN_TIMEOUT_S, READ_TIMEOUT_S, FrameSource, SourceFailed
from edgecv.utils.io import atomic_path, sweep_stale
from edgecv.utils.signals import INTERRUPTS, Terminated

log = logging.getLogger("edgecv.run")


class Smoother:
    """Mean of the last N probability vectors: steadier labels on live video."""

    def __init__(self, n: int):
        self.buf: deque = deque(maxlen=max(1, n))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        self.buf.append(p)
        return p if len(self.buf) == 1 else np.mean(self.buf, axis=0)


def csi_scale_to(pre: Preprocessor) -> Tuple[int, int]:
    """(width, height) a CSI camera's frames are scaled to in hardware: the model's resize size."""
    h, w = pre.resized_size(CSI_SIZE[1], CSI_SIZE[0])
    return w, h


def annotate(frame: np.ndarray, text: str, fps: float) -> np.ndarray:
    out = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    cv2.rectangle(out, (0, 0), (out.shape[1], 26), (0, 0, 0), -1)
    cv2.putText(out, f"{text}  {fps:.1f} FPS", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


RECORD_SUFFIXES = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


class Recorder:
    """The annotated video of ``--record``: checked before the loop starts, written through ``atomic_path`` (a
    temporary beside the target, renamed at the end), and finalised (index written, renamed into place) whenever
    the loop ends, SIGTERM and Ctrl-C included, so the recording is always playable and never half-written at
    its final name. A run that wrote no frame leaves no file."""

    def __init__(self, path: str, fps: float = 30.0):
        p = Path(os.path.abspath(os.fsdecode(path)))
        suffix = p.suffix.lower()
        if suffix not in RECORD_SUFFIXES:
            raise OutputError(f"--record {path}: unsupported extension {p.suffix or '(none)'!r} "
                              f"(use {', '.join(sorted(RECORD_SUFFIXES))})")
        if p.is_dir():
            raise OutputError(f"--record {path}: is a directory; give a file name")
        if not p.parent.is_dir():
            raise OutputError(f"--record {path}: folder {p.parent} does not exist")
        if not os.access(p.parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
            raise OutputError(f"--record {path}: not writable")
        sweep_stale(p.parent)  # any dead run's temporaries here (their names may not contain ours)
        self.path, self.fps = p, fps
        self.fourcc = cv2.VideoWriter_fourcc(*RECORD_SUFFIXES[suffix])
        self._target = atomic_path(p)
        self.tmp = self._target.__enter__()
        probe = cv2.VideoWriter(self.tmp, self.fourcc, fps, (64, 48))
        ok = probe.isOpened()
        probe.release()
        if not ok:
            self._abort()
            raise OutputError(f"--record {path}: this OpenCV cannot write {p.suffix} video")
        self.writer = None
        self.size = None
        self.frames = 0

    def write(self, vis: np.ndarray) -> None:
        if self.writer is None:
            self.size = (vis.shape[1], vis.shape[0])
            self.writer = cv2.VideoWriter(self.tmp, self.fourcc, self.fps, self.size)
        if (vis.shape[1], vis.shape[0]) != self.size:  # folders mix image sizes; video cannot
            vis = cv2.resize(vis, self.size)
        self.writer.write(vis)
        self.frames += 1

    def _abort(self) -> None:
        try:
            self._target.__exit__(_NoFrames, _NoFrames(), None)
        except _NoFrames:
            pass

    def close(self) -> Optional[str]:
        """Finalise; the recording's path, or None when no frame was written (nothing is left then)."""
        if self.writer is None:
            self._abort()
            return None
        self.writer.release()
        self.writer = None
        self._target.__exit__(None, None, None)
        return str(self.path)


class _NoFrames(Exception):
    """Ends a recording's temporary file without renaming it into place."""


@dataclass
class RunOptions:
    """Everything ``edgecv run`` can be told besides the bundle and the source (its flags, by name).

    ``resize``: the preprocessing resize mode (``auto``, ``area`` or ``fast``, see edgecv.runtime.preprocess).
    ``decode_threads``: FFmpeg decoder threads for files and RTSP; by default 1 while inference runs on the
    CPU (a multi-threaded decoder decodes ahead on the cores the model needs: the Lite0 loop measured
    inference 1.05x bare with one decoder thread against 1.15x with two).
    ``camera_resize``: a CSI camera delivers frames already scaled by the Jetson's VIC to the model's
    resize size, so the CPU only crops and normalises (display and recording then show that size too).
    ``dla_core``: run a TensorRT engine built for this DLA core (-1: the GPU).
    ``gpu_preprocess``: ``auto`` resizes and normalises on the GPU, straight into the engine's device input,
    where the backend's input lives on a CUDA device (TensorRT) and cuda-python is installed; ``on`` requires
    it; ``off`` keeps the CPU path (edgecv.runtime.gpu_preprocess).
    ``infer_workers``: several cameras on a CPU backend: engine instances that each batch a round of frames,
    side by side (default one single-threaded worker per core; edgecv.runtime.multi_loop.plan_workers).
    """

    backend: str = "auto"
    precision: Optional[str] = None
    topk: int = 1
    smooth: int = 1
    max_frames: Optional[int] = None
    as_json: bool = False
    display: bool = False
    record: Optional[str] = None
    loop: bool = False
    realtime: bool = False
    threads: Optional[int] = None
    max_failures: Optional[int] = None  # live sources: None retries forever (capped backoff); files fail at once
    resize: str = "auto"
    decode_threads: Optional[int] = None
    camera_resize: bool = True
    open_timeout_s: float = OPEN_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S
    dla_core: int = -1
    fps: Optional[float] = None  # --realtime pace for folders (and files without a frame rate); default 30
    max_age_ms: Optional[float] = None  # never classify a frame older than this (dropped as stale)
    min_score: Optional[float] = None  # below this top score the frame is reported as "unknown"
    gpu_preprocess: str = "auto"
    infer_workers: Optional[int] = None  # several cameras on a CPU backend: None = one per core (plan_workers)


GPU_PREPROCESS = ("auto", "on", "off")


def warm_up(be, x: np.ndarray, max_batch: int) -> None:
    """One engine call per batch size the loop can make, before the first frame: OpenVINO compiles a model per
    batch size and TensorRT allocates on its first enqueue, and a live camera's frames would be dropped
    meanwhile (6 of the first 180 at 30 fps in the Lite0 benchmark's first run)."""
    x[...] = 0.0
    for n in range(1, max_batch + 1):
        be.infer(x[:n])


def select_gpu_preprocess(be, pre, mode: str) -> Optional[Callable]:
    """The backend's GPU preprocessor for ``mode`` (see RunOptions.gpu_preprocess), or None for the CPU path."""
    from edgecv.errors import DeviceError

    if mode not in GPU_PREPROCESS:
        raise ValueError(f"gpu_preprocess must be one of {', '.join(GPU_PREPROCESS)}, not {mode!r}")
    if mode == "off":
        return None
    try:
        fn = be.gpu_preprocessor(pre)
    except Exception as e:  # noqa: BLE001 - NVRTC or driver trouble: auto keeps the CPU path, on reports it
        if mode == "on":
            raise DeviceError(f"--gpu-preprocess on: {e}") from None
        log.warning("GPU preprocessing unavailable (%s); preprocessing on the CPU", e)
        return None
    if fn is None and mode == "on":
        raise DeviceError(f"--gpu-preprocess on: the {be.name} backend's input is not on a CUDA device, or "
                          "cuda-python is missing (pip install 'edgecv[cuda]')")
    return fn


def run(target, source: str, backend: str = "auto", options: Optional[RunOptions] = None,
        emit: Optional[Callable[[str], None]] = None, **fields) -> Dict:
    """Classify frames from ``source``; returns a summary (frames, FPS, latency percentiles per stage).

    Options come as a :class:`RunOptions`, or as its fields by name (``run(b, src, topk=3)``).
    """
    o = dataclasses.replace(options or RunOptions(), backend=backend, **fields)
    topk, smooth, max_frames, as_json, display, record = o.topk, o.smooth, o.max_frames, o.as_json, o.display, o.record
    loop, realtime, threads, max_failures, resize = o.loop, o.realtime, o.threads, o.max_failures, o.resize
    decode_threads, camera_resize = o.decode_threads, o.camera_resize
    from edgecv.bundle.reader import open_bundle
    from edgecv.runtime.select import open_backend

    if decode_threads is not None and decode_threads < 1:
        raise ValueError(f"decode_threads must be >= 1, got {decode_threads}")
    if topk < 1 or smooth < 1 or (max_failures is not None and max_failures < 0) or \
            (max_frames is not None and max_frames < 0):
        raise ValueError("topk and smooth must be >= 1, max_failures and max_frames >= 0")
    from edgecv.runtime.notify import Notifier

    notifier = Notifier()
    emit = emit or (lambda s: print(s, flush=True))
    bundle = open_bundle(target)
    labels = bundle.labels
    pre = Preprocessor(bundle.preprocess, resize)
    recorder = Recorder(record) if record else None  # a bad path is refused before anything runs
    be, info = open_backend(bundle, o.backend, o.precision, threads=threads, dla_core=o.dla_core)
    try:
        gpu_pre = select_gpu_preprocess(be, pre, o.gpu_preprocess)
    except BaseException:
        be.close()
        raise
    if decode_threads is None and be.runs_on_cpu:
        decode_threads = 1
    scale_to = csi_scale_to(pre) if camera_resize else None  # used by csi:// sources only
    x = be.input_buffer(1)
    if x is None or x.dtype != np.float32 or x.shape != (1, pre.channels, pre.crop, pre.crop):
        x = np.empty((1, pre.channels, pre.crop, pre.crop), np.float32)  # infer's check names the mismatch
    try:
        warm_up(be, x, 1)
        src = FrameSource(source, loop=loop, realtime=realtime, max_failures=max_failures,
                          decode_threads=decode_threads, scale_to=scale_to, open_timeout_s=o.open_timeout_s,
                          read_timeout_s=o.read_timeout_s, fps=o.fps, heartbeat=notifier.ping)
        if src.unusable is not None:
            raise src.unusable
    except BaseException:
        be.close()
        raise
    smoother = Smoother(smooth)
    stages: Dict[str, List[float]] = {"capture_wait": [], "preprocess": [], "infer": [], "postprocess": []}
    show = display and display_available()
    n = stale = unknown = 0
    ages: List[float] = []
    wall_offset = time.time() - time.monotonic()  # monotonic capture times -> epoch seconds in the JSON lines
    t_start = time.perf_counter()
    interrupted: Optional[str] = None
    error: Optional[str] = None
    fps = 0.0
    cv_threads = cv2.getNumThreads()
    if be.runs_on_cpu:
        # OpenCV's worker threads and ONNX Runtime's contend for the same cores between frames: with
        # OpenCV on one thread the Lite0 loop measured 0.4 ms faster inference and 0.1 ms faster resizing.
        cv2.setNumThreads(1)
    try:
        frames = src.frames()
        while max_frames is None or n < max_frames:
            t0 = time.perf_counter()
            try:
                frame = next(frames)
            except StopIteration:
                break
            t1 = time.perf_counter()
            age_ms = (time.monotonic() - src.frame_time) * 1e3
            if o.max_age_ms is not None and age_ms > o.max_age_ms:
                stale += 1  # a frame older than the budget is never classified as if it were current
                notifier.ping()
                continue
            if gpu_pre is not None:
                gpu_pre(frame, 0)  # enqueued on the engine's stream: its time shows in "infer"
                t2 = time.perf_counter()
                logits = be.infer_device(1)[0]
            else:
                pre(frame, out=x[0])
                t2 = time.perf_counter()
                logits = be.infer(x)[0]
            t3 = time.perf_counter()
            notifier.ping()  # from the inference loop: a hung inference stops the pings
            if smooth > 1:
                probs = smoother(softmax(logits))
                top = top_k(probs, topk)
                scores = probs[top]
            else:
                top, scores = top_k_softmax(logits, topk)
            t4 = time.perf_counter()
            for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[k].append(v * 1e3)
            idx = int(top[0])
            label = labels[idx] if idx < len(labels) else str(idx)
            if o.min_score is not None and scores[0] < o.min_score:
                idx, label = -1, "unknown"  # the reject option: no class is forced on an unsure frame
                unknown += 1
            ages.append(age_ms)
            n += 1
            notifier.ready(f"classifying {source}")
            fps = n / (time.perf_counter() - t_start)
            if as_json:
                emit(json.dumps({"frame": n - 1, "label": label, "index": idx, "score": float(scores[0]),
                                 "topk": [{"index": int(i), "label": labels[i] if i < len(labels) else str(i),
                                           "score": float(p)} for i, p in zip(top, scores)],
                                 "capture_time": round(src.frame_time + wall_offset, 6), "age_ms": round(age_ms, 3),
                                 "latency_ms": {k: round(v[-1], 4) for k, v in stages.items()}}))
            if show or recorder:
                vis = annotate(frame.copy(), f"{label} {scores[0]:.2f}", fps)
                if recorder:
                    recorder.write(vis)
                if show:
                    cv2.imshow("edgecv", vis)
                    if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                        break
    except INTERRUPTS as e:
        interrupted = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
    except SourceFailed as e:
        error = str(e)
    finally:
        t_end = time.perf_counter()  # frames/s: the time spent classifying, not releasing the engine
        cv2.setNumThreads(cv_threads)
        notifier.stopping()
        notifier.close()
        src.close()
        be.close()
        recorded = recorder.close() if recorder else None
        if show:
            cv2.destroyAllWindows()
    elapsed = t_end - t_start
    summary = {"frames": n, "fps": n / elapsed if elapsed else 0.0, "dropped": src.dropped,
               "reconnects": src.reconnects, "skipped": src.skipped, "backend": info["backend"],
               "resize": "gpu (exact antialiased)" if gpu_pre is not None else resize,
               "artifact": info["file"], "interrupted": interrupted, "error": error, "recorded": recorded,
               "stale": stale, "unknown": unknown,
               "age_ms": percentiles(ages) if ages else None,
               "precision": info.get("precision"), "chosen_by": info.get("chosen_by"), "fallback": info.get("fallback"),
               "recorded_frames": recorder.frames if recorder else 0,
               "latency_ms": {k: percentiles(v) for k, v in stages.items() if v}}
    if n:
        total = np.sum([stages[k] for k in ("preprocess", "infer", "postprocess")], axis=0)
        summary["latency_ms"]["pre_infer_post"] = percentiles(total)
    return summary

