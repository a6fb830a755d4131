"""``edgecv check``: a bundle's checksums, and its TensorRT-target ONNX against TensorRT's Q/DQ rules.

Rules (TensorRT explicit quantization, ONNX parser): opset >= 13; Q/DQ scales are constant, finite,
positive; zero-points are int8 zeros (TensorRT supports only symmetric quantization, and a missing
zero-point means uint8 in ONNX); activations are quantized per tensor; weights per tensor or per
channel on axis 0 (the output-channel axis of Conv and of Gemm with transB=1); no int32 bias Q/DQ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np


@dataclass
class CheckResult:
    errors: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class _Graph:
    """The constants and producers of an ONNX graph, for judging its Q/DQ nodes."""

    def __init__(self, model):
        self.inits = {i.name: i for i in model.graph.initializer}
        self.consts = {n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant" and n.attribute}
        self.producers = {o: n for n in model.graph.node for o in n.output}

    def const(self, tensor_name):
        return self.inits.get(tensor_name) or self.consts.get(tensor_name)

    def is_weight(self, n) -> bool:
        src = n.input[0]
        if src in self.inits or src in self.consts:
            return True
        p = self.producers.get(src)  # weight Q -> DQ chains: Q's input is an initializer
        return p is not None and p.op_type == "QuantizeLinear" and p.input[0] in self.inits


def _zero_point_problems(g: _Graph, n, where: str) -> List[str]:
    from onnx import TensorProto, numpy_helper

    if len(n.input) < 3 or not n.input[2]:
        return [f"{where}: missing zero-point (ONNX then means uint8; TensorRT needs int8 zeros)"]
    zt = g.const(n.input[2])
    if zt is None:
        return [f"{where}: zero-point is not a constant"]
    out = []
    if zt.data_type != TensorProto.INT8:
        dtype = TensorProto.DataType.Name(zt.data_type)
        out.append(f"{where}: " + ("int32 bias Q/DQ (keep biases in float)" if zt.data_type == TensorProto.INT32
                                   else f"zero-point type {dtype} (TensorRT needs INT8)"))
    if np.any(numpy_helper.to_array(zt) != 0):
        out.append(f"{where}: non-zero zero-point (TensorRT supports symmetric int8 only)")
    return out


def _qdq_node_problems(g: _Graph, n, where: str) -> List[str]:
    """TensorRT's rules for one Q/DQ node: a finite positive constant scale, an int8 zero-point of 0, per-tensor
    activation scales, per-channel weights on axis 0."""
    from onnx import numpy_helper

    if len(n.input) < 2 or not n.input[1]:
        return [f"{where}: missing scale"]
    st = g.const(n.input[1])
    if st is None:
        return [f"{where}: scale {n.input[1]!r} is not a constant"]
    scale = numpy_helper.to_array(st)
    out = [] if np.all(np.isfinite(scale)) and not np.any(scale <= 0) else [f"{where}: scale must be finite and > 0"]
    out += _zero_point_problems(g, n, where)
    axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
    if scale.size > 1 and not g.is_weight(n):
        out.append(f"{where}: per-channel scale ({scale.size}) on an activation; TensorRT needs per-tensor "
                   "activation scales")
    elif scale.size > 1 and axis != 0:
        out.append(f"{where}: per-channel weights on axis {axis}; TensorRT expects axis 0")
    return out


def check_trt_qdq(model, name: str = "model") -> CheckResult:
    """Check an onnx.ModelProto against TensorRT's Q/DQ rules; every violation is listed with its node."""
    res = CheckResult()
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        res.errors.append(f"{name}: opset {opset} < 13 (per-channel Q/DQ needs opset 13)")
    g = _Graph(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    for n in qdq:
        res.errors += _qdq_node_problems(g, n, f"{name}: {n.op_type} {n.name or n.output[0]}")
    if not qdq:
        res.errors.append(f"{name}: no QuantizeLinear/DequantizeLinear nodes (not an explicit int8 model)")
    res.notes.append(f"{name}: {len(qdq)} Q/DQ nodes, opset {opset}")
    return res


def require_trt_qdq(model, bundle_dir, file_name: str, calib=None) -> None:
    """Post-quantize step of the TensorRT target: an export whose Q/DQ breaks TensorRT's rules stops here."""
    from edgecv.errors import ExportError

    chk = check_trt_qdq(model, file_name)
    if not chk.ok:
        raise ExportError("TensorRT Q/DQ check failed: " + "; ".join(chk.errors[:5]))


def check_bundle(bundle_dir: str) -> CheckResult:
    """Verify the manifest and every checksum; load every model and match its I/O with the manifest; check
    the TensorRT-target ONNX against TensorRT's Q/DQ rules. Every problem is listed, none raises."""
    import onnx

    from edgecv.bundle.reader import open_bundle
    from edgecv.errors import USER_ERRORS
    from edgecv.runtime.backends.ort import OrtBackend
    from edgecv.runtime.backends.select import io_mismatches

    res = CheckResult()
    try:
        bundle = open_bundle(bundle_dir)
        labels = bundle.labels
        bundle.preprocess  # noqa: B018 (validated on access)
    except USER_ERRORS() as e:
        res.errors.append(str(e))
        return res
    res.notes.append(f"{bundle_dir}: {len(bundle.manifest['files'])} files, checksums ok, {len(labels)} labels")
    seen = set()
    for art in bundle.manifest["artifacts"]:
        f = art["file"]
        if f in seen:
            continue
        seen.add(f)
        try:
            model = onnx.load(str(bundle.path(f)))
            onnx.checker.check_model(model)
        except Exception as e:  # protobuf and checker errors have many types
            res.errors.append(f"{f}: not a valid ONNX model ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})")
            continue
        try:
            be = OrtBackend(str(bundle.path(f)), threads=1)
        except USER_ERRORS() as e:
            res.errors.append(str(e))
            continue
        problems = io_mismatches(bundle, be, f)
        be.close()
        res.errors += problems
        if not problems:
            res.notes.append(f"{f}: loads; input {list(be.inputs[0].shape)} and outputs match the manifest")
        checker = _target_checker(art["target"])
        if checker and art["precision"] == "int8":
            r = checker(model, f)
            res.errors += r.errors
            res.notes += r.notes
    return res


def _target_checker(name: str):
    from edgecv import targets

    try:
        t = targets.get(name)
    except KeyError:
        return None
    return targets.load(t.checker) if t.checker else None
