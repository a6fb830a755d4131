"""Fashion-MNIST from its idx (optionally gzipped) files, as Debian's dataset-fashion-mnist ships them."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Tuple

import numpy as np

from edgecv.errors import DatasetError
from edgecv.utils.io import relative_hint

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def is_fashion_mnist_dir(path: str | Path) -> bool:
    """A folder holding Fashion-MNIST's idx files (the one place that recognises the layout)."""
    p = Path(path)
    return p.is_dir() and any(p.glob("t10k-images-idx3-ubyte*"))


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (root / name).is_file():
            return root / name
    raise DatasetError(f"{root}: Fashion-MNIST file {stem}(.gz) not found "
                       "(install with: apt-get install -y dataset-fashion-mnist)")


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (magic, dims, big-endian sizes, uint8 payload)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read idx file: {e}") from None
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated idx header")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise DatasetError(f"{path}: not a uint8 idx file (magic {data[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, found {payload.size}")
    return payload.reshape(dims)


def load_fashion_mnist(root: str | Path = DEFAULT_PATH, split: str = "train") -> Tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 [N,28,28], labels int64 [N])`` for ``split`` in train|test."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: Fashion-MNIST folder not found{relative_hint(root)} "
                           "(install with: apt-get install -y dataset-fashion-mnist)")
    img_stem, lbl_stem = _FILES[split]
    images = read_idx(_find(root, img_stem))
    labels = read_idx(_find(root, lbl_stem)).astype(np.int64)
    if len(images) != len(labels):
        raise DatasetError(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split")
    if len(images) == 0:
        raise DatasetError(f"{root}: the {split} split is empty")
    return images, labels
