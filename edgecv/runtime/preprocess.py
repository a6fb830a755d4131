"""numpy/OpenCV preprocessing that matches the training evaluation transform (no torch).

Spec (the bundle's ``preprocess.json``): resize the shorter side to ``resize`` (torchvision's size
rule), centre-crop ``crop`` (torchvision's rounding), scale to 0..1, normalise with mean/std, NCHW.
The one known difference: torchvision resizes with antialiased bilinear, OpenCV here with INTER_AREA
when shrinking (its closest antialiased kernel) and INTER_LINEAR when enlarging, so pixel values
differ slightly; top-1 agreement on the shared ImageNet images is measured by a test.
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
        mean = np.asarray(spec["mean"], np.float32)
        std = np.asarray(spec["std"], np.float32)
        # (x * scale - mean) / std folded into one multiply-add per pixel.
        self._mul = (scale / std).astype(np.float32)
        self._add = (-mean / std).astype(np.float32)

    def resized_size(self, h: int, w: int):
        """torchvision.transforms.Resize(int): the shorter side becomes ``resize``, the longer truncates."""
        if h <= w:
            return self.resize, int(self.resize * w / h)
        return int(self.resize * h / w), self.resize

    def to_model_pixels(self, image_bgr_or_gray: np.ndarray) -> np.ndarray:
        """Decoded frame (BGR or gray, uint8 HxW[xC]) -> the model's channel order (RGB or gray)."""
        img = image_bgr_or_gray
        if self.channels == 3:
            if img.ndim == 2:
                return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
            if img.shape[2] == 4:
                return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        if img.ndim == 3:
            return cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
        return img

    def __call__(self, frame: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """One frame -> float32 [C, crop, crop]; writes into ``out`` when given (no allocation)."""
        img = self.to_model_pixels(frame)
        h, w = img.shape[:2]
        nh, nw = self.resized_size(h, w)
        if (nh, nw) != (h, w):
            interp = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
            img = cv2.resize(img, (nw, nh), interpolation=interp)
        top = int(round((nh - self.crop) / 2.0))
        left = int(round((nw - self.crop) / 2.0))
        img = img[top: top + self.crop, left: left + self.crop]
        if img.ndim == 2:
            img = img[:, :, None]
        x = img.astype(np.float32) * self._mul + self._add
        chw = np.transpose(x, (2, 0, 1))
        if out is None:
            return np.ascontiguousarray(chw)
        out[...] = chw
        return out


def load_image(path: str, channels: int) -> Optional[np.ndarray]:
    """Decode with OpenCV; None for unreadable files (the caller counts and skips them)."""
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    try:
        return cv2.imread(str(path), flag)
    except cv2.error:
        return None
