"""The TensorRT calibration cache's format (implicit int8 on TensorRT 8.5-10.x: JetPack 5/6, DLA).

As IInt8EntropyCalibrator2 writes it: a header ``TRT-<version>-EntropyCalibration2``, then one
``tensor_name: <8 hex digits>`` line per tensor, the hex digits being the big-endian IEEE-754 bits of the float32
scale (amax / 127). The export writes it (edgecv.export.calib_cache); the device reads it and retargets its header
to its own TensorRT. No torch or TensorRT import here.
"""
from __future__ import annotations

import re
import struct
from typing import Dict, Tuple

from edgecv.utils.versions import version_tuple

HEADER_RE = re.compile(r"^TRT-(\d+)-(\w+)$")
DEFAULT_TRT_VERSION = "10.3.0"  # JetPack 6.1


def trt_version_number(version: str) -> int:
    """The integer TensorRT prints in cache headers: 8.6.1 -> 8601, 10.3.0 -> 100300."""
    major, minor, patch = version_tuple(version)
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", float(scale)).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0]


def format_cache(scales: Dict[str, float], trt_version: str = DEFAULT_TRT_VERSION,
                 algorithm: str = "EntropyCalibration2") -> bytes:
    lines = [f"TRT-{trt_version_number(trt_version)}-{algorithm}"]
    lines += [f"{name}: {scale_to_hex(s)}" for name, s in scales.items()]
    return ("\n".join(lines) + "\n").encode()


def parse_cache(data: bytes, source: str = "calibration cache") -> Tuple[int, str, Dict[str, float]]:
    """Return ``(version number, algorithm, {tensor: scale})``; malformed lines raise ValueError naming the line."""
    text = data.decode("ascii", errors="strict")
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{source}: empty")
    m = HEADER_RE.match(lines[0].strip())
    if not m:
        raise ValueError(f"{source}: line 1: expected 'TRT-<version>-<Calibrator>', got {lines[0]!r}")
    scales = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, hexval = line.rpartition(": ")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{8}", hexval.strip()):
            raise ValueError(f"{source}: line {n}: expected 'tensor: 8 hex digits', got {line!r}")
        scales[name] = hex_to_scale(hexval.strip())
    return int(m.group(1)), m.group(2), scales


def retarget_header(data: bytes, trt_version: str) -> bytes:
    """Rewrite the header for the TensorRT on the device (the scale lines do not change between versions)."""
    _, algo, scales = parse_cache(data)
    return format_cache(scales, trt_version, algo)
