"""Image files in and out through Python's file API, never through OpenCV's path handling.

OpenCV converts a path to a C string itself: a file name that is not valid UTF-8 (a surrogate-escaped
``str``) crashed ``cv2.imread`` with a segmentation fault. Reading the bytes in Python and decoding them
with ``cv2.imdecode`` works for every name the file system allows, and a file that does not decode is
``None`` (counted and skipped by the caller), never an exception.
"""
from __future__ import annotations

import os
from typing import Optional

import cv2
import numpy as np

from edgecv.utils.io import atomic_path

# A decoded frame larger than this is refused (a 30,000 x 30,000 "image" would need 2.7 GB as BGR).
MAX_PIXELS = 1 << 28
MAX_FILE_BYTES = 512 << 20


def read_image(path: str | os.PathLike | bytes, flag: int = cv2.IMREAD_COLOR) -> Optional[np.ndarray]:
    """Decode an image file with OpenCV; None when it cannot be read or decoded.

    Only regular files are read (a FIFO named ``x.jpg`` would block forever, ``/dev/zero`` never ends), and
    only up to 512 MB.
    """
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    except OSError:
        return None
    finally:
        os.close(fd)
    if not data:
        return None
    buf = np.frombuffer(data, np.uint8)
    try:
        img = cv2.imdecode(buf, flag)
    except cv2.error:
        return None
    if img is None or img.size == 0 or img.shape[0] * img.shape[1] > MAX_PIXELS:
        return None
    return img


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
