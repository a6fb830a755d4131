"""``edgecv run``: the camera classification loop, as jetson-inference writes it: a source, a classifier (the same
:class:`~edgecv.runtime.classifier.Classifier` the Python API gives) and sinks::

    with Classifier(bundle) as clf:
        for frame in source.frames():
            pred = clf.classify_frame(frame)
            sinks.write(frame, pred)

Around that: a frame older than ``--max-age`` is never classified as if it were current, ``--min-score`` reports an
unsure frame as ``unknown``, systemd hears from the loop itself (READY after the first frame, WATCHDOG after each),
and Ctrl-C, SIGTERM or a source that fails end the loop with its summary.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from edgecv.runtime.classifier import Classifier, Prediction, Smoother
from edgecv.runtime.latency import percentiles
from edgecv.runtime.stream.capture import CSI_SIZE, SourceFailed
from edgecv.runtime.stream.options import RunOptions
from edgecv.runtime.stream.outputs import FrameStamp, Recorder, Sinks
from edgecv.runtime.stream.sources import FrameSource
from edgecv.utils.signals import INTERRUPTS, Terminated

STAGES = ("capture_wait", "preprocess", "infer", "postprocess")


def csi_scale_to(pre) -> Tuple[int, int]:
    """(width, height) a CSI camera's frames are scaled to in hardware: the model's resize size."""
    h, w = pre.resized_size(CSI_SIZE[1], CSI_SIZE[0])
    return w, h


def open_source(source: str, o: RunOptions, clf: Classifier, heartbeat) -> FrameSource:
    """The frame source for ``source`` (a source that cannot be one is refused here, before the loop)."""
    decode_threads = o.decode_threads or (1 if clf.backend.runs_on_cpu else None)
    src = FrameSource(source, o.source_options(decode_threads=decode_threads,
                                               scale_to=csi_scale_to(clf.pre) if o.camera_resize else None),
                      heartbeat=heartbeat)
    if src.unusable is not None:
        raise src.unusable
    return src


class LoopStats:
    """What the loop counts: frames, stale and unknown ones, and each stage's time and each frame's age."""

    def __init__(self):
        self.n = self.stale = self.unknown = 0
        self.stages: Dict[str, List[float]] = {k: [] for k in STAGES}
        self.ages: List[float] = []
        self.t_start = time.perf_counter()
        self.t_end: Optional[float] = None

    def add(self, wait_ms: float, latency_ms: Dict[str, float], age_ms: float) -> Dict[str, float]:
        times = {"capture_wait": wait_ms, **latency_ms}
        for k in STAGES:
            self.stages[k].append(times[k])
        self.ages.append(age_ms)
        self.n += 1
        return times

    def fps(self) -> float:
        elapsed = (self.t_end or time.perf_counter()) - self.t_start
        return self.n / elapsed if elapsed else 0.0

    def latency(self) -> Dict:
        out = {k: percentiles(v) for k, v in self.stages.items() if v}
        if self.n:
            out["pre_infer_post"] = percentiles(np.sum([self.stages[k] for k in STAGES[1:]], axis=0))
        return out


def reject_unsure(pred: Prediction, min_score: Optional[float]) -> bool:
    """The reject option: no class is forced on an unsure frame (it is reported as ``unknown``)."""
    if min_score is None or pred.score >= min_score:
        return False
    pred.index, pred.label = -1, "unknown"
    return True


def classify_stream(src: FrameSource, clf: Classifier, sinks: Sinks, o: RunOptions, notifier) -> Tuple:
    """The loop itself; ``(stats, interrupted, error)``."""
    stats, smoother, frames = LoopStats(), Smoother(o.smooth), src.frames()
    try:
        while o.max_frames is None or stats.n < o.max_frames:
            t0 = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                break
            wait_ms = (time.perf_counter() - t0) * 1e3
            age_ms = (time.monotonic() - src.frame_time) * 1e3
            if o.max_age_ms is not None and age_ms > o.max_age_ms:
                stats.stale += 1  # a frame older than the budget is never classified as if it were current
                notifier.ping()
                continue
            pred = clf.classify_frame(frame, o.topk, smoother)
            notifier.ping()  # from the inference loop: a hung inference stops the pings
            stats.unknown += reject_unsure(pred, o.min_score)
            times = stats.add(wait_ms, pred.latency_ms, age_ms)
            notifier.ready(f"classifying {src.src}")
            stamp = FrameStamp(src.frame_time, age_ms, src.frame_name)
            if not sinks.write(stats.n - 1, frame, pred, stamp, stats.fps(), times):
                break
    except INTERRUPTS as e:
        return _ended(stats), "SIGTERM" if isinstance(e, Terminated) else "SIGINT", None
    except SourceFailed as e:
        return _ended(stats), None, str(e)
    return _ended(stats), None, None


def _ended(stats: LoopStats) -> LoopStats:
    stats.t_end = time.perf_counter()  # frames/s: the time spent classifying, not releasing the engine
    return stats


def run(target, source: str, backend: str = "auto", options: Optional[RunOptions] = None,
        emit: Optional[Callable[[str], None]] = None, **fields) -> Dict:
    """Classify frames from ``source``; returns a summary (frames, FPS, latency percentiles per stage).

    Options come as a :class:`RunOptions`, or as its fields by name (``run(b, src, topk=3)``).
    """
    from edgecv.runtime.stream.notify import Notifier

    o = dataclasses.replace(options or RunOptions(), backend=backend, **fields).check()
    clf = Classifier(target, o.backend, o.precision, o.resize, o.threads, o.dla_core, o.gpu_preprocess)
    notifier, src, sinks = Notifier(), None, None
    cv_threads = cv2.getNumThreads()
    try:
        clf.warm_up(1)
        src = open_source(source, o, clf, notifier.ping)
        sinks = Sinks(emit, o.as_json, o.display, Recorder(o.record) if o.record else None)
        if clf.backend.runs_on_cpu:
            # OpenCV's worker threads and ONNX Runtime's contend for the same cores between frames: with
            # OpenCV on one thread the Lite0 loop measured 0.4 ms faster inference and 0.1 ms faster resizing.
            cv2.setNumThreads(1)
        stats, interrupted, error = classify_stream(src, clf, sinks, o, notifier)
    finally:
        cv2.setNumThreads(cv_threads)
        notifier.stopping()
        notifier.close()
        recorded = sinks.close() if sinks else None
        if src is not None:
            src.close()
        clf.close()
    return _summary(stats, src, clf, sinks, o, interrupted=interrupted, error=error, recorded=recorded)


def _summary(stats: LoopStats, src: FrameSource, clf: Classifier, sinks: Sinks, o: RunOptions, **ended) -> Dict:
    info = clf.info
    return {"frames": stats.n, "fps": stats.fps(), "dropped": src.dropped, "reconnects": src.reconnects,
            "skipped": src.skipped, "backend": info["backend"],
            "resize": "gpu (exact antialiased)" if clf.gpu_pre is not None else o.resize,
            "artifact": info["file"], **ended, "stale": stats.stale, "unknown": stats.unknown,
            "age_ms": percentiles(stats.ages) if stats.ages else None, "precision": info.get("precision"),
            "chosen_by": info.get("chosen_by"), "fallback": info.get("fallback"),
            "recorded_frames": sinks.recorder.frames if sinks.recorder else 0,
            "record_error": sinks.recorder.error if sinks.recorder else None, "latency_ms": stats.latency()}
