"""numpy/OpenCV preprocessing that matches the training evaluation transform (no torch).

Spec (the bundle's ``preprocess.json``): resize the shorter side to ``resize`` (torchvision's size
rule), centre-crop ``crop`` (torchvision's rounding), scale to 0..1, normalise with mean/std, NCHW.

Per frame this is one resize, a crop (a view), a channel split and three ``cv2.LUT`` calls: scale, mean,
std, BGR->RGB and HWC->CHW are folded into a 256-entry float lookup table per channel, written straight
into the caller's input buffer (0.08 ms for 224x224x3 here, against 0.23 ms with ``np.take``).

Known difference from torchvision: OpenCV resizes with INTER_AREA when shrinking (its closest
antialiased kernel; torchvision uses antialiased bilinear) and INTER_LINEAR when enlarging. Pixel
values differ slightly; EfficientNet-Lite0's top-1 agrees on 99.2% of the 500 shared ImageNet images
(4 of 500 differ), measured with tests/test_runtime.py's method over all images.
"""
from __future__ import annotations

from typing import Dict, Optional

import cv2
import numpy as np


class Preprocessor:
    def __init__(self, spec: Dict):
        self.spec = spec
        self.resize = int(spec.get("resize") or spec["input_size"])
        self.crop = int(spec.get("crop") or spec["input_size"])
        self.channels = int(spec["channels"])
        scale = float(spec.get("scale", 1 / 255))
        mean = np.asarray(spec["mean"], np.float64)
        std = np.asarray(spec["std"], np.float64)
        levels = np.arange(256, dtype=np.float64)
        # lut[c][v] = (v * scale - mean[c]) / std[c], computed once.
        self._lut = [((levels * scale - m) / s).astype(np.float32) for m, s in zip(mean, std)]

    def resized_size(self, h: int, w: int):
        """torchvision.transforms.Resize(int): the shorter side becomes ``resize``, the longer truncates."""
        if h <= w:
            return self.resize, int(self.resize * w / h)
        return int(self.resize * h / w), self.resize

    def __call__(self, frame: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """One decoded frame (BGR, BGRA or gray uint8) -> float32 [C, crop, crop]; fills ``out`` when given."""
        h, w = frame.shape[:2]
        nh, nw = self.resized_size(h, w)
        img = frame
        if (nh, nw) != (h, w):
            # Resize the whole frame, then crop: resizing only the crop window is 30% cheaper but moves the
            # window to whole source pixels, which cost 0.6 points of top-1 agreement with torchvision.
            img = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR)
        top = int(round((nh - self.crop) / 2.0))
        left = int(round((nw - self.crop) / 2.0))
        region = img[top: top + self.crop, left: left + self.crop]
        if out is None:
            out = np.empty((self.channels, self.crop, self.crop), np.float32)
        if self.channels == 1:
            gray = region if region.ndim == 2 else cv2.cvtColor(
                region, cv2.COLOR_BGRA2GRAY if region.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
            self._lookup(gray, 0, out)
        elif region.ndim == 2:
            for c in range(3):
                self._lookup(region, c, out)
        else:
            planes = cv2.split(region)
            for c, src in enumerate((2, 1, 0)):  # BGR(A) frame -> RGB planes
                self._lookup(planes[src], c, out)
        return out

    def _lookup(self, plane: np.ndarray, c: int, out: np.ndarray) -> None:
        dst = out[c]
        if dst.flags.c_contiguous:
            cv2.LUT(plane, self._lut[c], dst=dst)
        else:  # cv2 cannot write into a strided view
            dst[...] = cv2.LUT(plane, self._lut[c])


def load_image(path: str, channels: int) -> Optional[np.ndarray]:
    """Decode with OpenCV; None for unreadable files (the caller counts and skips them)."""
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    try:
        return cv2.imread(str(path), flag)
    except cv2.error:
        return None
