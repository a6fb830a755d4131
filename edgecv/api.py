"""The Python API beside the CLI: ``Classifier`` on the device, the pipeline functions on the workstation.

On the device (no torch), as jetson-inference offers ``imageNet.Classify``::

    from edgecv import Classifier

    with Classifier("bundle/") as clf:              # the precision `edgecv verify` chose, else the default
        pred = clf.classify(frame)                  # an OpenCV BGR (or gray) uint8 frame, or an image path
        print(pred.label, pred.score, pred.topk)

On the workstation::

    import edgecv

    recipe = edgecv.load_recipe("recipes/fashion_mnist.yaml", ["train.epochs=3"])
    edgecv.train_recipe(recipe, "runs/fm")
    manifest = edgecv.export_bundle("recipes/fashion_mnist.yaml", "out/fm", {"int8": True, "prune": 0.5})
    report = edgecv.verify("out/fm")
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from edgecv.errors import InputSpecError

Frame = Union[np.ndarray, str, os.PathLike]


@dataclass
class Prediction:
    index: int
    label: str
    score: float  # softmax probability
    topk: List[Tuple[int, str, float]] = field(default_factory=list)


class Classifier:
    """A deploy bundle loaded for classification: preprocessing, backend and labels in one object."""

    def __init__(self, bundle: Union[str, os.PathLike], backend: str = "auto", precision: Optional[str] = None,
                 resize: str = "auto", threads: Optional[int] = None):
        from edgecv.bundle.reader import open_bundle
        from edgecv.runtime.preprocess import Preprocessor
        from edgecv.runtime.select import open_backend

        self.bundle = open_bundle(os.fspath(bundle))
        self.labels: List[str] = self.bundle.labels
        self.pre = Preprocessor(self.bundle.preprocess, resize)
        self.backend, self.info = open_backend(self.bundle, backend, precision, threads)
        shape = (1, self.pre.channels, self.pre.crop, self.pre.crop)
        buf = self.backend.input_buffer(1)
        self._x = buf if buf is not None and buf.shape == shape and buf.dtype == np.float32 else \
            np.empty(shape, np.float32)

    def _frame(self, frame: Frame) -> np.ndarray:
        if isinstance(frame, (str, bytes, os.PathLike)):
            import cv2

            from edgecv.utils.images import read_image_why

            img, why = read_image_why(frame, cv2.IMREAD_GRAYSCALE if self.pre.channels == 1 else cv2.IMREAD_COLOR)
            if img is None:
                raise InputSpecError(f"{os.fsdecode(frame)}: {why}")
            return img
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim not in (2, 3) \
                or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)) or min(frame.shape[:2]) < 1:
            got = f"{frame.dtype}{list(frame.shape)}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise InputSpecError(f"expected a uint8 image (HxW gray, or HxWx3 BGR / HxWx4 BGRA), got {got}")
        return frame[..., 0] if frame.ndim == 3 and frame.shape[2] == 1 else frame

    def _predictions(self, logits: np.ndarray, topk: int) -> List[Prediction]:
        out = []
        for row in np.atleast_2d(logits):
            e = np.exp(row - row.max())
            p = e / e.sum()
            top = np.argsort(-p, kind="stable")[: max(1, topk)]
            k = [(int(i), self.labels[i], float(p[i])) for i in top]
            out.append(Prediction(k[0][0], k[0][1], k[0][2], k))
        return out

    def classify(self, frame: Frame, topk: int = 1) -> Prediction:
        """Classify one frame (BGR/BGRA/gray uint8 array as OpenCV decodes it) or image file."""
        self.pre(self._frame(frame), out=self._x[0])
        return self._predictions(self.backend.infer(self._x), topk)[0]

    def classify_batch(self, frames: Sequence[Frame], topk: int = 1) -> List[Prediction]:
        """Classify several frames in batches of up to the backend's max batch."""
        step = self.backend.max_batch or 32
        out: List[Prediction] = []
        for i in range(0, len(frames), step):
            x = np.stack([self.pre(self._frame(f)) for f in frames[i: i + step]])
            out += self._predictions(self.backend.infer(x), topk)
        return out

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
