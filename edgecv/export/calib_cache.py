"""Writing the TensorRT calibration cache of a bundle (its format: edgecv.bundle.calib_cache).

edgecv takes the scales from the TensorRT-target Q/DQ model so the two int8 forms agree tensor by tensor, and the
calibrated range of every other tensor.
"""
from __future__ import annotations

import os
from typing import Dict

from edgecv.bundle.calib_cache import DEFAULT_TRT_VERSION, format_cache
from edgecv.bundle.names import CALIBRATION_CACHE


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

    write_cache_from_qdq(model, Path(bundle_dir) / CALIBRATION_CACHE, calib=calib)
