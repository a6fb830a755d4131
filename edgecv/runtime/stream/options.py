"""``RunOptions``: everything ``edgecv run`` can be told besides the bundle and the sources, as one typed object that
the CLI maps its flags to in one place (edgecv.cli.device) and every loop reads."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from edgecv.runtime.stream.capture import OPEN_TIMEOUT_S, READ_TIMEOUT_S
from edgecv.runtime.stream.sources import SourceOptions
from edgecv.utils.limits import MAX_SMOOTH, MAX_TIMEOUT_S, check_fps


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
    it; ``off`` keeps the CPU path (edgecv.runtime.tensorrt.gpu_preprocess).
    ``infer_workers``: several cameras on a CPU backend: engine instances that each batch a round of frames,
    side by side (default one single-threaded worker per core; edgecv.runtime.stream.multi.plan_workers).
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

    def check(self) -> "RunOptions":
        """ValueError naming the first option out of range (the CLI's flags are range-checked already)."""
        if self.decode_threads is not None and self.decode_threads < 1:
            raise ValueError(f"decode_threads must be >= 1, got {self.decode_threads}")
        if self.topk < 1 or not 1 <= self.smooth <= MAX_SMOOTH or \
                (self.max_failures is not None and self.max_failures < 0) or \
                (self.max_frames is not None and self.max_frames < 0):
            raise ValueError(f"topk must be >= 1, smooth from 1 to {MAX_SMOOTH}, max_failures and max_frames >= 0")
        if self.fps is not None:
            check_fps(self.fps)
        for name in ("max_age_ms", "min_score", "open_timeout_s", "read_timeout_s"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):  # nan passes every comparison of a range
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if not (self.open_timeout_s <= MAX_TIMEOUT_S and self.read_timeout_s <= MAX_TIMEOUT_S):
            raise ValueError(f"open_timeout_s and read_timeout_s must be at most {MAX_TIMEOUT_S:.0f} s")
        return self

    def source_options(self, **overrides) -> SourceOptions:
        """What a frame source is told (a camera list's entry may override ``loop``, ``realtime`` and ``fps``)."""
        kw = dict(loop=self.loop, realtime=self.realtime, max_failures=self.max_failures,
                  open_timeout_s=self.open_timeout_s, read_timeout_s=self.read_timeout_s, fps=self.fps,
                  decode_threads=self.decode_threads)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return SourceOptions(**kw)
