"""numpy/OpenCV preprocessing that matches the training evaluation transform (no torch).

Spec (the bundle's ``preprocess.json``): resize the shorter side to ``resize`` (torchvision's size
rule), centre-crop ``crop`` (torchvision's rounding), scale to 0..1, normalise with mean/std, NCHW.

Per frame this is one resize, a crop (a view), a channel split and three ``cv2.LUT`` calls: scale, mean,
std, BGR->RGB and HWC->CHW are folded into a 256-entry float lookup table per channel, written straight
into the caller's input buffer (0.08 ms for 224x224x3 here, against 0.23 ms with ``np.take``).

Known difference from torchvision: torchvision shrinks with antialiased bilinear (PIL's triangle filter
of half-width = scale); OpenCV has no such kernel. Three resize modes (numbers: EfficientNet-Lite0, the 500
shared ImageNet images at their own sizes, mean absolute difference from torchvision in grey levels, top-1
agreement with the torchvision pipeline; times on the 2-core development machine):

``area``: INTER_AREA over the whole frame, then the crop. 0.93 grey levels, 99.2% (4 images differ).
1.8 ms for a 640x480 frame. Its box kernel drifts from the triangle as the shrink grows: 0.41 grey levels
below a 1.3x shrink, 1.29 at 1.5-2x, 1.45 beyond 2x.

``fast``: only the crop window is computed: a separable blur whose taps are least-squares fitted so that
blur + bilinear sampling approximates PIL's triangle filter at this scale, then one ``warpAffine`` onto the
crop grid (sub-pixel exact window, no rounding of the crop to whole source pixels). 0.79 grey levels,
98.8%; 0.48 ms against 1.82 ms for ``area`` on a 640x480 frame (normalisation included). Fitted per
scale, it holds its accuracy as the shrink grows: 0.51 grey levels below 1.3x, 0.55 at 1.5-2x, 0.43 beyond.

``auto`` (default): per frame size, ``fast`` from a 1.45x shrink up, ``area`` below, where each is the
closer (the crossover in the per-scale numbers above). 0.72 grey levels, 99.2%; a VGA camera (1.875x for
a 256 resize) gets ``fast``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from edgecv.bundle.spec import PreprocessSpec
from edgecv.errors import InputSpecError
from edgecv.utils.limits import frame_size_problem

RESIZE_MODES = ("auto", "area", "fast")
AUTO_FAST_FROM = 1.45  # ``auto``: shrink factor (source / resized shorter side) from which ``fast`` is used
# 5 taps. On the 500 ImageNet images: 3 taps 0.91 grey levels / 97.6% agreement, 5 taps 0.79 / 98.8%,
# 7 taps 0.76 / 98.4% at 1.2x the cost.
BLUR_RADIUS = 2
# From this shrink on, ``fast`` averages the crop window with INTER_AREA instead: 5 taps cannot cover a
# triangle filter 6+ source pixels wide (the fit degrades into aliasing), while a box average over the window
# can, and the window's rounding to whole source pixels is then under 1/6 of an output pixel.
FAST_AREA_FROM = 6.0


def _pil_triangle_weights(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """PIL's antialiased-bilinear weights (what torchvision's ``antialias=True`` computes), one row per output."""
    support = max(scale, 1.0)
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        c = (i + 0.5) * scale
        lo, hi = max(int(c - support + 0.5), 0), min(int(c + support + 0.5), n_in)
        taps = np.clip(1 - np.abs((np.arange(lo, hi) - c + 0.5) / support), 0, None)
        w[i, lo:hi] = taps / taps.sum()
    return w


def fitted_blur_kernel(scale: float, radius: int = BLUR_RADIUS) -> np.ndarray:
    """Symmetric taps K such that (blur by K, then bilinear sampling) best matches PIL's triangle filter.

    Both sides are linear in K, so this is one least-squares solve over many output phases.
    """
    # Enough output rows for an interior fit at any scale (a fixed 240 left none from a ~18.5x shrink on,
    # and the empty least-squares problem returned NaN taps: all-black frames).
    n_in = max(240, int(math.ceil(scale * (2 * radius + 8 + 40))))
    n_out = int(n_in / scale)
    target = _pil_triangle_weights(n_in, n_out, scale)
    rows = range(radius + 4, n_out - radius - 4)  # interior: no border clamping on either side
    lin = np.zeros((n_out, n_in))
    for i in rows:
        c = (i + 0.5) * scale - 0.5
        j = int(math.floor(c))
        lin[i, j], lin[i, j + 1] = 1 - (c - j), c - j
    cols = []
    for k in range(radius + 1):
        shifted = lin if k == 0 else np.roll(lin, k, axis=1) + np.roll(lin, -k, axis=1)
        cols.append(shifted[list(rows)].ravel())
    x = np.linalg.lstsq(np.stack(cols, 1), target[list(rows)].ravel(), rcond=None)[0]
    k = np.concatenate([x[:0:-1], x])
    k = k / k.sum()
    if not np.all(np.isfinite(k)):
        raise ValueError(f"fitted blur for a {scale:.3g}x shrink is not finite")
    return k.astype(np.float32)


class Preprocessor:
    def __init__(self, spec: Dict, resize: str = "auto"):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, not {resize!r}")
        self.mode = resize
        self._plans: Dict[Tuple[int, int], Tuple] = {}  # frame size -> fast-mode window, taps, warp matrix
        self.spec = spec = PreprocessSpec.coerce(spec)
        self.resize, self.crop, self.channels = spec.resize_to, spec.crop_to, spec.channels
        self._lut = list(spec.lookup_tables())  # lut[c][v] = (v * scale - mean[c]) / std[c], computed once

    def resized_size(self, h: int, w: int):
        """torchvision.transforms.Resize(int): the shorter side becomes ``resize``, the longer truncates."""
        if h <= w:
            return self.resize, int(self.resize * w / h)
        return int(self.resize * h / w), self.resize

    def __call__(self, frame: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """One decoded frame (BGR, BGRA or gray uint8) -> float32 [C, crop, crop]; fills ``out`` when given.

        A frame over the frame budget (``edgecv.utils.images.frame_size_problem``) is an InputSpecError."""
        h, w = frame.shape[:2]
        problem = frame_size_problem(h, w)
        if problem:
            raise InputSpecError(f"frame refused: {problem}")
        nh, nw = self.resized_size(h, w)
        if (nh, nw) != (h, w) and self._shrink_mode(h, w, nh, nw) == "fast":
            return self._normalise(self._fast_crop(frame, h, w, nh, nw), out)
        img = frame
        if (nh, nw) != (h, w):
            # Resize the whole frame, then crop: resizing only the crop window is 30% cheaper but moves the
            # window to whole source pixels, which cost 0.6 points of top-1 agreement with torchvision.
            img = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR)
        top = int(round((nh - self.crop) / 2.0))
        left = int(round((nw - self.crop) / 2.0))
        return self._normalise(img[top: top + self.crop, left: left + self.crop], out)

    def mode_for(self, h: int, w: int) -> str:
        """The resize mode used for an h x w frame (``auto`` resolved by its shrink factor)."""
        return self._shrink_mode(h, w, *self.resized_size(h, w))

    def _shrink_mode(self, h: int, w: int, nh: int, nw: int) -> str:
        if self.mode != "auto":
            return self.mode
        return "fast" if min(h / nh, w / nw) >= AUTO_FAST_FROM else "area"

    def _fast_plan(self, h: int, w: int, nh: int, nw: int) -> Tuple:
        """Source window, blur taps and warp matrix for one frame size (computed once per size)."""
        sy, sx = h / nh, w / nw
        c = self.crop
        top, left = int(round((nh - c) / 2.0)), int(round((nw - c) / 2.0))
        if max(sx, sy) >= FAST_AREA_FROM:
            y0, x0 = int(round(top * sy)), int(round(left * sx))
            y1, x1 = max(y0 + 1, int(round((top + c) * sy))), max(x0 + 1, int(round((left + c) * sx)))
            return (slice(y0, min(y1, h)), slice(x0, min(x1, w))), "area", None
        margin = BLUR_RADIUS + 2  # blur taps + bilinear neighbour + rounding
        y0, x0 = max(0, int(top * sy) - margin), max(0, int(left * sx) - margin)
        y1, x1 = min(h, int(math.ceil((top + c) * sy)) + margin), min(w, int(math.ceil((left + c) * sx)) + margin)
        one = np.ones(1, np.float32)
        taps = (fitted_blur_kernel(sx) if sx > 1 else one, fitted_blur_kernel(sy) if sy > 1 else one) \
            if sx > 1 or sy > 1 else None
        # Output pixel (i, j) samples the source at torchvision's centre ((top+i+0.5)*sy-0.5, ...).
        m = np.array([[sx, 0, (left + 0.5) * sx - 0.5 - x0], [0, sy, (top + 0.5) * sy - 0.5 - y0]])
        return (slice(y0, y1), slice(x0, x1)), taps, m

    def _fast_crop(self, frame: np.ndarray, h: int, w: int, nh: int, nw: int) -> np.ndarray:
        """The crop of the resized frame, computed from the source window it needs (mode ``fast``)."""
        if (h, w) not in self._plans:
            if len(self._plans) >= 64:  # a folder of photos has many sizes; a camera has one
                self._plans.clear()
            self._plans[(h, w)] = self._fast_plan(h, w, nh, nw)
        window, taps, m = self._plans[(h, w)]
        roi = frame[window]
        if taps == "area":
            return cv2.resize(roi, (self.crop, self.crop), interpolation=cv2.INTER_AREA)
        if taps is not None:
            roi = cv2.sepFilter2D(roi, -1, taps[0], taps[1], borderType=cv2.BORDER_REPLICATE)
        return cv2.warpAffine(roi, m, (self.crop, self.crop), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)

    def _normalise(self, region: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
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
    from edgecv.utils.images import read_image

    return read_image(path, cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR)
