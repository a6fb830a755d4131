"""The images a bundle was made with: ``seen_images.txt``, so that no number is reported on images that chose
something in it.

An export records every image that trained, distilled, calibrated, tuned or quantization-aware trained the model
it ships: the recipe's training split, the calibration images, the tune split (labelled and pooled) and the QAT
images. ``edgecv eval BUNDLE --data DATA`` leaves those out of DATA, and says how many, so that a folder that holds
them (the training folder itself, the pools, the full Fashion-MNIST test set the tune split came from) cannot
flatter the bundle.

An image is known by its identity: the sha256 of its file's bytes (``sha256_file``) or of an array image's pixels
(``sha256_array``), the identities the export keeps its image sets disjoint by. The file holds the first
``KEY_HEX`` hex digits of each, sorted, one per line: 64 bits are ample to tell apart a few million images and keep
the file a sixth of a full list (about 170 kB for 10,000 images).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import FrozenSet, Iterable, Optional

from edgecv.errors import BundleError

KEY_HEX = 16
_LINE = re.compile(rf"^[0-9a-f]{{{KEY_HEX}}}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def seen_key(identity: str) -> str:
    """The key ``seen_images.txt`` stores for an image of sha256 ``identity``."""
    return identity[:KEY_HEX]


def seen_text(identities: Iterable[str]) -> str:
    """The file's text for ``identities`` (full sha256 hex digests; anything else, as an unreadable image's
    stand-in, is no image's identity and is left out)."""
    keys = sorted({seen_key(i) for i in identities if _HEX64.match(i)})
    return "".join(k + "\n" for k in keys)


def parse_seen(text: str, where: str) -> FrozenSet[str]:
    """The keys of a ``seen_images.txt``; a line that is not one is refused, naming ``where`` and the line."""
    keys = text.splitlines()
    for n, k in enumerate(keys, 1):
        if not _LINE.match(k):
            raise BundleError(f"{where}: line {n}: expected {KEY_HEX} lowercase hex digits, got {k[:40]!r}")
    return frozenset(keys)


def read_seen(bundle) -> Optional[FrozenSet[str]]:
    """The seen-image keys of an opened bundle (edgecv.bundle.reader.Bundle), or None when it records none (a
    bundle exported before edgecv kept the record)."""
    name = bundle.manifest.get("seen_images")
    if name is None:
        return None
    return parse_seen(bundle.read_text(name), str(Path(bundle.root) / name))
