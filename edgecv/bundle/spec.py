"""The preprocessing a model needs, as one dataclass that travels with it (checkpoint, bundle, runtime), the way
timm's pretrained config does: resize the shorter side to ``resize`` (torchvision's size rule), centre-crop
``crop``, scale pixels by ``scale``, normalise with ``mean``/``std`` per channel, NCHW, RGB (or grey).

``preprocess.json`` in a bundle and the ``preprocess`` entry of a checkpoint are its ``to_dict()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from edgecv.errors import BundleError

MAX_SIDE = 8192


@dataclass(frozen=True)
class PreprocessSpec:
    input_size: int
    channels: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    resize: Optional[int] = None  # shorter side before the crop (default: input_size)
    crop: Optional[int] = None  # the model's input (default: input_size)
    scale: float = 1.0 / 255.0

    @property
    def resize_to(self) -> int:
        return int(self.resize or self.input_size)

    @property
    def crop_to(self) -> int:
        return int(self.crop or self.input_size)

    def to_dict(self) -> Dict[str, Any]:
        return {"input_size": self.input_size, "resize": self.resize_to, "crop": self.crop_to,
                "channels": self.channels, "channel_order": "RGB" if self.channels == 3 else "GRAY", "layout": "NCHW",
                "scale": self.scale, "mean": list(self.mean), "std": list(self.std),
                "resize_interpolation": "bilinear_antialias"}

    def __getitem__(self, key: str):
        """The JSON form's values by key (``spec["mean"]``), as bundles' ``preprocess`` was read before it was a
        dataclass."""
        return self.to_dict()[key]

    def get(self, key: str, default=None):
        return self.to_dict().get(key, default)

    def lookup_tables(self) -> np.ndarray:
        """[C, 256] float32: pixel value -> normalised input, ``(v * scale - mean) / std`` (what the runtime's
        preprocessing and the golden vectors both apply)."""
        levels = np.arange(256, dtype=np.float64)
        return np.stack([((levels * self.scale - m) / s).astype(np.float32) for m, s in zip(self.mean, self.std)])

    @classmethod
    def from_dict(cls, spec: Any, where: str = "preprocess") -> "PreprocessSpec":
        """The spec from its JSON form, every value checked (BundleError naming ``where`` and the key)."""
        if not isinstance(spec, dict):
            raise BundleError(f"{where}: expected a JSON object, got {type(spec).__name__}")
        resize, crop = _side(spec, "resize", where, True), _side(spec, "crop", where, True)
        size = _side(spec, "input_size", where, optional=crop is not None) or crop  # the crop is the model's input
        ch = spec.get("channels")
        if ch not in (1, 3) or isinstance(ch, bool):
            raise BundleError(f"{where}: channels: expected 1 or 3, got {ch!r}")
        mean, std = _numbers(spec, "mean", ch, where), _numbers(spec, "std", ch, where)
        if any(s <= 0 for s in std):
            raise BundleError(f"{where}: std: every value must be > 0, got {list(std)!r}")
        sc = spec.get("scale", 1 / 255)
        if isinstance(sc, bool) or not isinstance(sc, (int, float)) or not 0 < sc < 1e6:
            raise BundleError(f"{where}: scale: expected a number > 0, got {sc!r}")
        out = cls(size, ch, mean, std, resize, crop, float(sc))
        if out.crop_to > out.resize_to:
            raise BundleError(f"{where}: crop {out.crop_to} is larger than resize {out.resize_to}")
        return out

    @classmethod
    def coerce(cls, spec: Union["PreprocessSpec", Dict]) -> "PreprocessSpec":
        return spec if isinstance(spec, cls) else cls.from_dict(spec)


def _side(spec: Dict, key: str, where: str, optional: bool = False) -> Optional[int]:
    v = spec.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SIDE:
        raise BundleError(f"{where}: {key}: expected an integer in 1..{MAX_SIDE}, got {v!r}")
    return v


def _numbers(spec: Dict, key: str, n: int, where: str) -> Tuple[float, ...]:
    v = spec.get(key)
    if not isinstance(v, (list, tuple)) or len(v) != n or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) < 1e6 for x in v):
        raise BundleError(f"{where}: {key}: expected {n} finite numbers, got {v!r}")
    return tuple(float(x) for x in v)
