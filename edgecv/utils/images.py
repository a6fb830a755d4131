"""Image files in and out through Python's file API, never through OpenCV's path handling.

OpenCV converts a path to a C string itself: a file name that is not valid UTF-8 (a surrogate-escaped
``str``) crashed ``cv2.imread`` with a segmentation fault. Reading the bytes in Python and decoding them
with ``cv2.imdecode`` works for every name the file system allows, and a file that does not decode is
``None`` (counted and skipped by the caller), never an exception.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np

from edgecv.utils.io import NotASmallFile, atomic_path, read_small
from edgecv.utils.limits import frame_size_problem

MAX_FILE_BYTES = 512 << 20
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}  # what a folder of images holds


def image_files(folder: str | os.PathLike) -> List[str]:
    """Every file with an image extension under ``folder``, in sub-folders too, sorted (what an unlabelled folder
    of photographs holds: camera replays, calibration pools, explain). A linked sub-folder is not entered (a
    link to a parent would never end); a broken link is listed, to be counted as unreadable when read."""
    return sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTS and not p.is_dir())


def encoded_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(height, width)`` from an encoded image's header (PNG, JPEG, GIF, BMP, WebP), without decoding it;
    None for other formats or a header that does not say."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return h, w
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return h, w
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(h), abs(w)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> Optional[Tuple[int, int]]:
    kind = data[12:16]
    if kind == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return h & 0x3FFF, w & 0x3FFF
    if kind == b"VP8L" and len(data) >= 25:
        b = int.from_bytes(data[21:25], "little")
        return ((b >> 14) & 0x3FFF) + 1, (b & 0x3FFF) + 1
    if kind == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[27:30], "little") + 1, int.from_bytes(data[24:27], "little") + 1
    return None


def _jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        seg = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return h, w
        i += 2 + seg
    return None


def read_image(path: str | os.PathLike | bytes, flag: int = cv2.IMREAD_COLOR) -> Optional[np.ndarray]:
    """Decode an image file with OpenCV; None when it cannot be read or decoded, or is over the frame budget
    (the caller counts and skips it). :func:`read_image_why` says why."""
    return read_image_why(path, flag)[0]


def read_image_why(path: str | os.PathLike | bytes, flag: int = cv2.IMREAD_COLOR) -> Tuple[Optional[np.ndarray], str]:
    """``(image, "")``, or ``(None, why)`` when the file cannot be read, is not an image, or is over the frame
    budget (``frame_size_problem``: checked on the header before decoding where the format has one, else after)."""
    data, why = read_encoded_image(path)
    if data is None:
        return None, why
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        return None, "not an image OpenCV can decode"
    problem = frame_size_problem(*img.shape[:2])
    return (None, problem) if problem else (img, "")


def read_encoded_image(path: str | os.PathLike | bytes) -> Tuple[Optional[bytes], str]:
    """``(bytes, "")`` of an image file still to be decoded, or ``(None, why)``: it cannot be read, is empty, or its
    header's size is over the frame budget. What every decoder (OpenCV here, PIL on the workstation) reads first.

    Only regular files are read (a FIFO named ``x.jpg`` would block forever, ``/dev/zero`` never ends), and
    only up to 512 MB.
    """
    try:
        data = read_small(path, MAX_FILE_BYTES)
    except NotASmallFile as e:
        return None, str(e)
    except OSError as e:
        return None, f"cannot be read ({e.strerror})"
    if not data:
        return None, "empty file"
    size = encoded_size(data)
    problem = frame_size_problem(*size) if size is not None else None
    return (None, problem) if problem else (data, "")


def opencv_path(path: str | os.PathLike) -> str:
    """A path OpenCV's video I/O can open: the path itself, or (for a name that is not UTF-8, which crashes
    OpenCV) ``/proc/self/fd/N`` for a descriptor opened here. The descriptor stays open for the process's
    caller closes it once OpenCV has opened the file (FFmpeg opens its own descriptor through the link)."""
    from edgecv.utils.io import utf8_safe

    if utf8_safe(path):
        return os.fsdecode(path)
    fd = os.open(path, os.O_RDONLY)
    return f"/proc/self/fd/{fd}"


def write_png(path: str | os.PathLike, img: np.ndarray) -> None:
    """Encode ``img`` (BGR or gray uint8) as PNG and write it atomically."""
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"{os.fsdecode(path)}: PNG encoding failed")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.tobytes())
