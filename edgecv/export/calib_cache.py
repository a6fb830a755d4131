"""TensorRT calibration cache (implicit int8 on TensorRT 8.5-10.x: JetPack 5/6, DLA).

Format, as IInt8EntropyCalibrator2 writes it: a header ``TRT-<version>-EntropyCalibration2``, then one
``tensor_name: <8 hex digits>`` line per tensor, the hex digits being the big-endian IEEE-754 bits of
the float32 scale (amax / 127). edgecv takes the scales from the TensorRT-target Q/DQ model so the two
int8 forms agree tensor by tensor, and the calibrated range of every other tensor. No torch or TensorRT
import here (the device reads it too).
"""
from __future__ import annotations

import os
import re
import struct
from typing import Dict, Tuple

HEADER_RE = re.compile(r"^TRT-(\d+)-(\w+)$")
DEFAULT_TRT_VERSION = "10.3.0"  # JetPack 6.1


def trt_version_number(version: str) -> int:
    """The integer TensorRT prints in cache headers: 8.6.1 -> 8601, 10.3.0 -> 100300."""
    parts = [int(p) for p in (version.split(".") + ["0", "0"])[:3]]
    major, minor, patch = parts
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


def scales_from_qdq(model) -> Dict[str, float]:
    """Per-tensor activation scales of a symmetric int8 Q/DQ model, keyed by the quantized tensor's name.

    Graph input/activation tensors keep their fp32-ONNX names through quantization, so these names are
    the ones TensorRT sees when it parses the fp32 ONNX for the implicit-int8 build.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    dq_of = {n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    scales = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        s = numpy_helper.to_array(inits[node.input[1]]).ravel()
        if s.size == 1:
            # A quantized graph output is renamed ("logits" -> "logits_QuantizeLinear_Input") so that the final
            # DequantizeLinear can keep the output name: the fp32 ONNX calls that tensor by the output name.
            dq = dq_of.get(node.output[0])
            name = dq.output[0] if dq is not None and dq.output[0] in outputs else node.input[0]
            scales[name] = float(s[0])
    return scales


def write_cache_from_qdq(model, path: str | os.PathLike, trt_version: str = DEFAULT_TRT_VERSION,
                         calib=None) -> Dict[str, float]:
    """The cache with the Q/DQ model's scales; with ``calib`` (edgecv.export.quantize.Calibration), also every
    other calibrated tensor (amax / 127), so that implicit int8 has a range for each layer's output even where
    the explicit placement leaves it float (TensorRT fuses it there; DLA needs every range)."""
    from edgecv.utils.io import atomic_write_bytes

    scales = scales_from_qdq(model)
    if calib is not None:
        graph_tensors = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
        for name in calib.ranges:
            if name not in scales and name in graph_tensors:
                lo, hi = calib.range_of(name)
                amax = max(abs(lo), abs(hi))
                if amax > 0:
                    scales[name] = amax / 127.0
    atomic_write_bytes(path, format_cache(scales, trt_version))
    return scales


def write_cache_for_bundle(model, bundle_dir, file_name: str, calib=None) -> None:
    """Post-quantize step of the TensorRT target: the implicit-int8 calibration cache with the Q/DQ scales
    (and the calibrated ranges of the tensors the explicit placement leaves float)."""
    from pathlib import Path

    write_cache_from_qdq(model, Path(bundle_dir) / "calibration.cache", calib=calib)
