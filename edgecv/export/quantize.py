"""int8 post-training quantization with ONNX Runtime's quantizer, in two target forms.

Calibration runs once per method (``calibrate``); the ranges are then reused for every quantization
(``quantize``), so the accuracy gate can try per-layer fallbacks in seconds rather than re-calibrating.

* ``tensorrt``: what TensorRT's ONNX parser takes for explicit int8: symmetric int8 Q/DQ with
  zero-point 0, per-channel weights on axis 0, per-tensor activations, biases left in float.
* ``onnxruntime``: uint8 activations / int8 weights (U8S8) Q/DQ, which ONNX Runtime's CPU provider
  fuses into QLinearConv/QGemm (symmetric S8S8 leaves many convs in fp32 and runs slower there).
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import onnx

from edgecv.recipe import CALIB_METHODS, WEIGHT_ROUNDINGS
from edgecv.utils.io import atomic_path

log = logging.getLogger("edgecv.quantize")

# ONNX Runtime's quantize_static drops the histogram options, so entropy with its defaults
# (128 bins, 128 quantized bins) has one candidate threshold and equals MinMax. edgecv builds the
# calibrator itself and passes them. 2048 bins clipped too hard on EfficientNet-Lite0 (79.8% vs 87.6%).
# Per method (the names are edgecv.recipe.CALIB_METHODS'): ONNX Runtime's CalibrationMethod and its options.
CALIBRATORS = {
    "minmax": ("MinMax", {}),
    "entropy": ("Entropy", {"num_bins": 512, "num_quantized_bins": 128}),
    "percentile": ("Percentile", {"num_bins": 2048, "percentile": 99.99, "symmetric": True}),
}
assert set(CALIBRATORS) == set(CALIB_METHODS), "every calibration method needs its ONNX Runtime calibrator"
CALIB_CHUNK = 64  # images per collect_data call (memory: every intermediate tensor of a chunk is held at once)
QUANT_OPS = ["Conv", "Gemm", "MatMul", "Add", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool",
             "Relu", "Clip", "Concat", "Reshape", "Flatten", "Sigmoid"]


class ArrayReader:
    """An ONNX Runtime CalibrationDataReader over a float32 NCHW array, in mini-batches."""

    def __init__(self, input_name: str, data: np.ndarray, batch: int = 16):
        self.input_name, self.data, self.batch = input_name, data, batch
        self._it = None
        self.rewind()

    def rewind(self) -> None:
        self._it = iter(range(0, len(self.data), self.batch))

    def get_next(self):
        i = next(self._it, None)
        return None if i is None else {self.input_name: self.data[i: i + self.batch]}

    def __len__(self) -> int:
        return (len(self.data) + self.batch - 1) // self.batch

    def set_range(self, start_index: int, end_index: int) -> None:  # used by strided calibration
        self._it = iter(range(start_index * self.batch, min(len(self.data), end_index * self.batch), self.batch))


@dataclass
class Calibration:
    method: str
    samples: int
    ranges: object  # onnxruntime.quantization.calibrate.TensorsData
    # per Conv/Gemm: mean input per channel over the calibration images, for bias correction (None: off)
    input_means: Optional[Dict[str, np.ndarray]] = None
    # bias shifts per fp32 model (path and mtime) and node: computed once, reused by every fallback trial
    shifts: Dict[tuple, Dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    # per Conv/Gemm: its weight rounded by GPTQ onto the int8 grid (edgecv.export.gptq; None: nearest rounding)
    rounded: Optional[Dict[str, np.ndarray]] = field(default=None, repr=False)
    # per weight (name, content digest, axis, quantizer settings): ONNX Runtime's per-channel scales, reused by every trial
    weight_scales: Dict[tuple, list] = field(default_factory=dict, repr=False)

    def range_of(self, tensor: str):
        lo, hi = self.ranges[tensor].range_value
        return float(np.asarray(lo).ravel()[0]), float(np.asarray(hi).ravel()[0])


def calibrate(fp32_path: str | os.PathLike, data: np.ndarray, method: str = "minmax",
              input_name: str = "input", bias_correction: bool = True, rounding: str = "nearest") -> Calibration:
    """Collect activation ranges of every quantizable tensor over ``data`` with ``method``, and, for
    ``rounding="gptq"``, each weighted layer's weight rounded by GPTQ on ``data`` (edgecv.export.gptq), or else
    (for bias correction, edgecv.export.bias_correction) each weighted layer's mean input per channel."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    if method not in CALIB_METHODS:
        raise ValueError(f"unknown calibration method {method!r} (expected one of {', '.join(CALIB_METHODS)})")
    if rounding not in WEIGHT_ROUNDINGS:
        raise ValueError(f"unknown weight rounding {rounding!r} (expected one of {', '.join(WEIGHT_ROUNDINGS)})")
    if len(data) == 0:
        raise ValueError("no calibration images")
    cm, options = getattr(CalibrationMethod, CALIBRATORS[method][0]), CALIBRATORS[method][1]
    with tempfile.TemporaryDirectory(prefix="edgecv-calib-") as tmp:
        cal = create_calibrator(Path(fp32_path), op_types_to_calibrate=QUANT_OPS,
                                augmented_model_path=str(Path(tmp) / "augmented.onnx"), calibrate_method=cm,
                                providers=["CPUExecutionProvider"], extra_options=dict(options))
        # In chunks: ORT keeps every intermediate tensor of what one collect_data call reads until it has built the
        # histograms (512 Lite0 images at once ran a 24 GB machine out of memory); its collectors merge chunk after
        # chunk. Within a chunk every batch must have the same size (ORT stacks them).
        for i in range(0, len(data), CALIB_CHUNK):
            chunk = data[i: i + CALIB_CHUNK]
            cal.collect_data(ArrayReader(input_name, chunk, max(d for d in range(1, 17) if len(chunk) % d == 0)))
        ranges = cal.compute_data()
        del cal
    if rounding == "gptq":  # GPTQ's H holds the inputs' mean: it already removes the shift bias correction would
        from edgecv.export.gptq import rounded_weights

        return Calibration(method, int(len(data)), ranges, rounded=rounded_weights(str(fp32_path), data, input_name))
    means = None
    if bias_correction:
        from edgecv.export.bias_correction import input_means

        means = input_means(str(fp32_path), data, input_name)
    return Calibration(method, int(len(data)), ranges, means)


def quantize(fp32_path: str | os.PathLike, calib: Calibration, out_path: str | os.PathLike, target,
             exclude: Sequence[str] = (), op_types: Sequence[str] = tuple(QUANT_OPS)) -> onnx.ModelProto:
    """Write the int8 Q/DQ model for ``target`` (an edgecv.targets.Target, or its name) with the quantizer
    settings it declares; ``exclude`` node names stay float, and so do ops not in ``op_types``. With GPTQ-rounded
    weights in ``calib``, the layers quantized take them (on the grid, so the quantizer keeps them); with input
    means, their biases are first corrected for their weights' rounding."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    from edgecv import targets

    t = targets.get(target) if isinstance(target, str) else target
    extra = {k: v for k, v in t.quant.items() if k != "activation"}
    act = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[t.quant.get("activation", "uint8")]
    with tempfile.TemporaryDirectory(prefix="edgecv-quant-") as tmp:
        src = Path(fp32_path)
        if calib.rounded:
            from edgecv.export.gptq import rounded_model

            src = Path(tmp) / "rounded.onnx"
            onnx.save(rounded_model(str(fp32_path), calib.rounded, exclude, op_types), str(src))
        elif calib.input_means:
            from edgecv.export.bias_correction import corrected_model

            src = Path(tmp) / "bias_corrected.onnx"
            st = os.stat(fp32_path)
            cache = calib.shifts.setdefault((str(fp32_path), st.st_mtime_ns, st.st_size), {})
            onnx.save(corrected_model(str(fp32_path), calib.input_means, exclude, op_types, cache), str(src))
        model = load_model_with_shape_infer(src)
    if "TensorQuantOverrides" not in extra:
        extra["TensorQuantOverrides"] = weight_scale_overrides(model, calib.weight_scales, exclude, op_types,
                                                               extra.get("MinimumRealRange"))
    q = QDQQuantizer(model, True, False, QuantType.QInt8, act, calib.ranges, None, list(exclude),
                     list(op_types), extra)
    q.quantize_model()
    # The quantizer appends Q/DQ nodes out of order; ONNX (and TensorRT's parser) need a topological order.
    q.model.topological_sort()
    proto = float_outputs(q.model.model)
    with atomic_path(out_path) as tmp:
        onnx.save(proto, tmp)
    return proto


def per_channel_weights(model: onnx.ModelProto, exclude: Sequence[str] = (),
                        op_types: Sequence[str] = tuple(QUANT_OPS)) -> Dict[str, int]:
    """The weights ONNX Runtime's QDQ quantizer quantizes per channel, each with its channel axis: a Conv's on axis 0,
    a Gemm's on 0 when B is transposed, else 1 (its default axes). Weights two nodes share are left out."""
    uses: Dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm") or n.op_type not in op_types or n.name in exclude or len(n.input) < 2:
            continue
        w = n.input[1]
        if w not in inits or uses.get(w) != 1:
            continue
        trans_b = any(a.name == "transB" and a.i for a in n.attribute)
        out[w] = 0 if n.op_type == "Conv" or trans_b else 1
    return out


def weight_scale_overrides(model: onnx.ModelProto, cache: Dict[tuple, list], exclude: Sequence[str] = (),
                           op_types: Sequence[str] = tuple(QUANT_OPS), min_real_range: Optional[float] = None) -> Dict:
    """ONNX Runtime's own symmetric int8 per-channel scales of every per-channel weight, as ``TensorQuantOverrides``.

    Why: ORT's quantizer computes them in a Python loop, channel by channel: about half of each EfficientNet-Lite0
    quantization (1.7 s against 0.8 s with them reused, ``tools/bench_ranking.py``), and the fallback search
    quantizes the same weights about 50 times per target. ``cache``
    keeps them per weight (by content, so GPTQ-rounded and float weights differ); handed back as overrides, ORT
    takes the same numbers instead of recomputing them, so the file is the same (``tests/test_weight_scales.py``).
    The weights are int8, as ``quantize`` asks of the quantizer.
    """
    from onnx import numpy_helper

    try:
        from onnxruntime.quantization.quant_utils import compute_data_quant_params
    except ImportError:  # an older ONNX Runtime without it computes them itself, as slowly as before
        return {}

    axes = per_channel_weights(model, exclude, op_types)
    out = {}
    for t in model.graph.initializer:
        if t.name not in axes:
            continue
        w = numpy_helper.to_array(t)
        key = (t.name, hashlib.sha256(w.tobytes()).hexdigest(), w.shape, str(w.dtype), axes[t.name], min_real_range)
        if key not in cache:
            params = [compute_data_quant_params(np.ascontiguousarray(w.take(i, axes[t.name])).ravel(),
                                                onnx.TensorProto.INT8, True, reduce_range=False,
                                                min_real_range=min_real_range)
                      for i in range(w.shape[axes[t.name]])]
            cache[key] = [{"axis": axes[t.name], "scale": float(s), "zero_point": int(z)} for z, s in params]
        out[t.name] = cache[key]
    return out


def float_outputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the Q/DQ pair ONNX Runtime's quantizer puts on a graph output (the logits), in place.

    Rounding the logits to 256 levels helps no consumer: it only moves near-tied classes. On EfficientNet-Lite0
    (ORT target) the largest logit error fell from 2.14 to 1.26 and the mean KL to fp32 from 0.0097 to 0.0085 on
    the 325 calibration and tune images; ONNX Runtime then runs the last Gemm as QGemm with a float output, and
    OpenVINO drops the dequantizing subgraph after it.
    """
    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: Dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    protected = {v.name for v in g.input} | {v.name for v in g.output}
    for out in [o.name for o in g.output]:
        dq = producer.get(out)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or consumers.get(q.output[0]) != 1:
            continue
        src = q.input[0]
        if src in protected or src not in producer:
            continue
        g.node.remove(dq)
        g.node.remove(q)
        for vi in [v for v in g.value_info if v.name in (src, q.output[0], out)]:
            g.value_info.remove(vi)
        for n in g.node:  # the float tensor takes the output's name
            n.output[:] = [out if x == src else x for x in n.output]
            n.input[:] = [out if x == src else x for x in n.input]
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used or t.name in protected]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
    return proto


def quantizable_nodes(fp32_path: str | os.PathLike, op_types: Iterable[str] = ("Conv", "Gemm", "MatMul")) -> List[str]:
    """Names of the compute nodes whose int8 form dominates accuracy and speed (fallback candidates)."""
    g = onnx.load(str(fp32_path)).graph
    return [n.name for n in g.node if n.op_type in set(op_types)]
