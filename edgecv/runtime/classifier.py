"""``Classifier``: a deploy bundle opened for inference, the one way every device-side use opens one (the Python
API, ``edgecv run``'s loops, ``eval``), as jetson-inference's ``imageNet`` is::

    from edgecv import Classifier

    with Classifier("bundle/") as clf:              # the precision `edgecv verify` chose, else the default
        pred = clf.classify(frame)                  # an OpenCV BGR (or gray) uint8 frame, or an image path
        print(pred.label, pred.score, pred.topk)

It holds the bundle, its labels, the preprocessing (CPU, or one CUDA kernel straight into a TensorRT engine's
input), the backend and what was chosen (``info``).
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from edgecv.errors import DeviceError, InputSpecError
from edgecv.metrics import softmax, top_k, top_k_softmax

Frame = Union[np.ndarray, str, os.PathLike]
GPU_PREPROCESS = ("auto", "on", "off")


@dataclass
class Prediction:
    index: int
    label: str
    score: float  # softmax probability
    topk: List[Tuple[int, str, float]] = field(default_factory=list)
    latency_ms: Dict[str, float] = field(default_factory=dict)  # preprocess, infer, postprocess (classify_frame)


class Smoother:
    """Mean of the last N probability vectors: steadier labels on live video.

    A running sum, so a frame costs one vector's work whatever N is (a mean over the whole window cost 10 ms a
    frame at N = 10,000 with 1,000 classes); it is summed afresh once per window, so rounding cannot build up.
    """

    def __init__(self, n: int):
        self.buf: deque = deque(maxlen=max(1, n))
        self.total: Optional[np.ndarray] = None
        self.since_exact = 0

    def __call__(self, p: np.ndarray) -> np.ndarray:
        p = np.array(p)  # a copy: the window must not change if the caller reuses its buffer
        if self.total is None or self.total.shape != p.shape:  # the first frame, or another model's width
            self.buf.clear()
            self.total, self.since_exact = np.zeros(p.shape, np.float64), 0
        if len(self.buf) == self.buf.maxlen:
            self.total -= self.buf[0]
        self.buf.append(p)
        self.total += p
        self.since_exact += 1
        if self.since_exact >= self.buf.maxlen:
            self.total, self.since_exact = np.sum(self.buf, axis=0, dtype=np.float64), 0
        return p if len(self.buf) == 1 else (self.total / len(self.buf)).astype(p.dtype, copy=False)


def select_gpu_preprocess(be, pre, mode: str) -> Optional[Callable]:
    """The backend's GPU preprocessor for ``mode`` (``auto``: where the engine's input is on a CUDA device and
    cuda-python is installed; ``on``: required; ``off``), or None for the CPU path."""
    import logging

    if mode not in GPU_PREPROCESS:
        raise ValueError(f"gpu_preprocess must be one of {', '.join(GPU_PREPROCESS)}, not {mode!r}")
    if mode == "off":
        return None
    try:
        fn = be.gpu_preprocessor(pre)
    except Exception as e:  # noqa: BLE001 - NVRTC or driver trouble: auto keeps the CPU path, on reports it
        if mode == "on":
            raise DeviceError(f"--gpu-preprocess on: {e}") from None
        logging.getLogger("edgecv.run").warning("GPU preprocessing unavailable (%s); preprocessing on the CPU", e)
        return None
    if fn is None and mode == "on":
        raise DeviceError(f"--gpu-preprocess on: the {be.name} backend's input is not on a CUDA device, or "
                          "cuda-python is missing (pip install 'edgecv[cuda]')")
    return fn


def check_frame(frame) -> np.ndarray:
    """``frame`` if it is an image the preprocessing takes (uint8, HxW or HxWx1/3/4), else InputSpecError."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim not in (2, 3) \
            or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)) or min(frame.shape[:2]) < 1:
        got = f"{frame.dtype}{list(frame.shape)}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise InputSpecError(f"expected a uint8 image (HxW gray, or HxWx3 BGR / HxWx4 BGRA), got {got}")
    return frame[..., 0] if frame.ndim == 3 and frame.shape[2] == 1 else frame


class Classifier:
    """A deploy bundle loaded for classification: preprocessing, backend and labels in one object.

    ``bundle``: a bundle folder, an install root (its active slot) or an opened Bundle. ``backend``/``precision``:
    as ``edgecv run``'s flags (default: what ``edgecv verify`` chose here, else the manifest's default).
    ``gpu_preprocess``: ``off`` (default), ``auto`` or ``on`` (see :func:`select_gpu_preprocess`).
    """

    def __init__(self, bundle, backend: str = "auto", precision: Optional[str] = None, resize: str = "auto",
                 threads: Optional[int] = None, dla_core: int = -1, gpu_preprocess: str = "off"):
        from edgecv.bundle.reader import open_bundle
        from edgecv.runtime.backends.select import open_backend
        from edgecv.runtime.preprocess import Preprocessor

        self.bundle = open_bundle(bundle if not isinstance(bundle, os.PathLike) else os.fspath(bundle))
        self.labels: List[str] = self.bundle.labels
        self.pre = Preprocessor(self.bundle.preprocess, resize)
        self.backend, self.info = open_backend(self.bundle, backend, precision, threads=threads, dla_core=dla_core)
        try:
            self.gpu_pre = select_gpu_preprocess(self.backend, self.pre, gpu_preprocess)
        except BaseException:
            self.backend.close()
            raise
        self._x = self.input_batch(1)
        self._threads, self._dla_core = threads, dla_core

    def sibling(self, threads: Optional[int] = None) -> "Classifier":
        """Another engine instance of the same artefact (one per inference worker of a multi-camera loop)."""
        return Classifier(self.bundle, self.info["backend"], self.info.get("precision"), self.pre.mode, threads,
                          self._dla_core)

    def input_batch(self, n: int) -> np.ndarray:
        """An input array of ``n`` rows: the backend's own input memory where it has one (no copy), else new."""
        shape = (n, self.pre.channels, self.pre.crop, self.pre.crop)
        buf = self.backend.input_buffer(n)
        return buf if buf is not None and buf.shape == shape and buf.dtype == np.float32 else np.empty(shape, np.float32)

    def warm_up(self, max_batch: int = 1) -> None:
        """One call per batch size a loop can make, before the first frame: OpenVINO compiles a model per batch
        size and TensorRT allocates on its first enqueue, and a live camera's frames would be dropped meanwhile
        (6 of the first 180 at 30 fps in the Lite0 benchmark's first run)."""
        x = self.input_batch(max_batch)
        x[...] = 0.0
        for n in range(1, max_batch + 1):
            self.backend.infer(x[:n])

    def _frame(self, frame: Frame) -> np.ndarray:
        if isinstance(frame, (str, bytes, os.PathLike)):
            import cv2

            from edgecv.utils.images import read_image_why

            img, why = read_image_why(frame, cv2.IMREAD_GRAYSCALE if self.pre.channels == 1 else cv2.IMREAD_COLOR)
            if img is None:
                raise InputSpecError(f"{os.fsdecode(frame)}: {why}")
            return img
        return check_frame(frame)

    def predictions(self, logits: np.ndarray, topk: int = 1, smoother: Optional[Smoother] = None) -> List[Prediction]:
        """One Prediction per row of ``logits`` (``smoother``: averaged with the previous rows it saw)."""
        out = []
        for row in np.atleast_2d(logits):
            if smoother is not None and smoother.buf.maxlen > 1:
                p = smoother(softmax(row))
                top = top_k(p, topk)
                scores = p[top]
            else:
                top, scores = top_k_softmax(row, topk)
            k = [(int(i), self.labels[i] if i < len(self.labels) else str(i), float(s)) for i, s in zip(top, scores)]
            out.append(Prediction(k[0][0], k[0][1], k[0][2], k))
        return out

    def classify(self, frame: Frame, topk: int = 1) -> Prediction:
        """Classify one frame (BGR/BGRA/gray uint8 array as OpenCV decodes it) or image file."""
        return self.classify_frame(self._frame(frame), topk)

    def classify_frame(self, frame: np.ndarray, topk: int = 1, smoother: Optional[Smoother] = None) -> Prediction:
        """Classify a decoded frame, timing each stage (``Prediction.latency_ms``): the camera loop's call."""
        t0 = time.perf_counter()
        if self.gpu_pre is not None:
            self.gpu_pre(frame, 0)  # enqueued on the engine's stream: its time shows in "infer"
            t1 = time.perf_counter()
            logits = self.backend.infer_device(1)
        else:
            self.pre(frame, out=self._x[0])
            t1 = time.perf_counter()
            logits = self.backend.infer(self._x)
        t2 = time.perf_counter()
        pred = self.predictions(logits, topk, smoother)[0]
        t3 = time.perf_counter()
        pred.latency_ms = {"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3}
        return pred

    def classify_batch(self, frames: Sequence[Frame], topk: int = 1) -> List[Prediction]:
        """Classify several frames in batches of up to the backend's max batch."""
        step = self.backend.max_batch or 32
        out: List[Prediction] = []
        for i in range(0, len(frames), step):
            x = np.stack([self.pre(self._frame(f)) for f in frames[i: i + step]])
            out += self.predictions(self.backend.infer(x), topk)
        return out

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
