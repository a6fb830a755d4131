"""Golden vectors: evaluation inputs, their labels and the fp32 model's logits, shipped in every bundle.

``edgecv verify`` runs them through each precision the device can build and compares with the fp32 logits
computed at export. Inputs are stored as the uint8 pixels they were normalised from (a quarter of the size
of float32, and compressed): the float inputs are rebuilt with the same per-channel table the runtime's
preprocessing uses, and the reference logits are computed on exactly those rebuilt inputs.
"""
from __future__ import annotations

import io
import os
from typing import Tuple

import numpy as np

from edgecv.bundle.spec import PreprocessSpec
from edgecv.errors import BundleError


def to_pixels(x: np.ndarray, spec) -> np.ndarray:
    """Normalised float inputs [N, C, H, W] -> the uint8 pixels they came from."""
    spec = PreprocessSpec.coerce(spec)
    mean = np.asarray(spec.mean, np.float64)[None, :, None, None]
    std = np.asarray(spec.std, np.float64)[None, :, None, None]
    return np.clip(np.round((x.astype(np.float64) * std + mean) / spec.scale), 0, 255).astype(np.uint8)


def to_inputs(pixels: np.ndarray, spec) -> np.ndarray:
    """uint8 pixels [N, C, H, W] -> normalised float inputs, by the spec's own lookup tables."""
    lut = PreprocessSpec.coerce(spec).lookup_tables()
    return np.stack([lut[c][pixels[:, c]] for c in range(pixels.shape[1])], 1)


def write_golden(path: str | os.PathLike, pixels: np.ndarray, labels: np.ndarray, logits: np.ndarray) -> None:
    from edgecv.utils.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, pixels=pixels.astype(np.uint8), labels=labels.astype(np.int64),
                        logits=logits.astype(np.float32))
    atomic_write_bytes(path, buf.getvalue())


def load_golden(bundle) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs float32 [N, C, H, W], labels [N], fp32 logits [N, K]) of a bundle; BundleError when absent or
    malformed."""
    g = bundle.manifest.get("golden")
    if not isinstance(g, dict) or not isinstance(g.get("file"), str):
        raise BundleError(f"{bundle.root}: this bundle has no golden vectors (exported by an older edgecv); "
                          "export it again")
    path = bundle.path(g["file"])
    try:
        with np.load(path, allow_pickle=False) as z:
            pixels, labels, logits = z["pixels"], z["labels"], z["logits"]
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"{path}: not a golden-vector file ({e})") from None
    pre = bundle.preprocess
    n = len(labels)
    if (pixels.dtype != np.uint8 or pixels.shape != (n, pre.channels, pre.crop_to, pre.crop_to) or logits.ndim != 2
            or len(logits) != n or n == 0 or not np.isfinite(logits).all()):
        raise BundleError(f"{path}: shapes do not fit the bundle (pixels {pixels.shape}, labels {labels.shape}, "
                          f"logits {logits.shape})")
    return to_inputs(pixels, pre), labels, logits
