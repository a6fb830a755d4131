"""GPTQ weight rounding for int8 (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", 2023, after Optimal Brain Quantization).

Rounding each weight to its nearest int8 step makes every layer's output error the sum of independent rounding
errors. GPTQ rounds a layer's weights one input column at a time and moves the columns not yet rounded to
compensate, so that the layer's output on the calibration images, ``W x``, changes as little as it can: the
second moment of the inputs, H = E[x x^T] (per group of a grouped convolution: per channel of a depthwise one),
says how. The grid is the one the quantizer uses anyway (per output channel, symmetric int8, scale max|w| / 127),
and each row keeps its largest weight on +-127 steps, so ONNX Runtime's quantizer finds the same scale and writes
the rounded weights back unchanged: what GPTQ chose is what ships, for every target.

H also holds the inputs' mean, so the error GPTQ minimizes includes the systematic shift bias correction removes;
the two are not combined. On pretrained EfficientNet-Lite0 at 8 bits it agrees with fp32 as well as nearest rounding
with bias correction does, within the noise of 500 images per folder (tools/weight_rounding.py, docs/int8.md), so
it is an option, not the default.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from edgecv.export.bias_correction import InitializerEditor, _attr, correctable_nodes, layer_inputs, quantized_nodes, quantized_weight

log = logging.getLogger("edgecv.quantize")

DAMP = 0.01  # of H's mean diagonal, added to it: GPTQ's default; keeps H invertible where inputs are collinear
QMAX = 127  # symmetric int8 weights, as ONNX Runtime quantizes them: q in [-127, 127], scale = max|w| / 127


def roundable(node: onnx.NodeProto) -> bool:
    """Conv with explicit pads and no dilation, or a Gemm in torch's Linear form: the layers whose inputs
    :func:`input_hessians` can unfold."""
    if node.op_type == "Gemm":
        return True
    return (_attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
            and all(d == 1 for d in _attr(node, "dilations", [1, 1])) and len(_attr(node, "kernel_shape", [])) == 2)


def _patches(x: np.ndarray, node: onnx.NodeProto, w_shape) -> torch.Tensor:
    """The node's input as the columns its weight multiplies: ``[images, groups, inputs per group, positions]``,
    float32. In torch, whose unfold uses every core, and a view where NumPy needed a transposed copy."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if node.op_type == "Gemm":
        return t.reshape(-1, t.shape[-1]).T.reshape(1, 1, t.shape[-1], -1)
    kh, kw = w_shape[2], w_shape[3]
    groups = _attr(node, "group", 1)
    top, left, bottom, right = _attr(node, "pads", [0, 0, 0, 0])
    sh, sw = _attr(node, "strides", [1, 1])
    n, c = t.shape[:2]
    if not (kh == kw == 1 and sh == sw == 1 and not any((top, left, bottom, right))):
        # [n, c * kh * kw, positions]: channel-major, then the kernel's rows and columns, the weight's order
        t = F.unfold(F.pad(t, (left, right, top, bottom)), (kh, kw), stride=(sh, sw))
    return t.reshape(n, groups, (c // groups) * kh * kw, -1)


def input_hessians(fp32_path: str, data: np.ndarray, input_name: str = "input", batch: int = 8) -> Dict[str, np.ndarray]:
    """Per roundable node (by name): H = sum of x x^T over every position of ``data``, per group
    (``[groups, d, d]``, float64), from the fp32 model."""
    model = onnx.load(str(fp32_path))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in correctable_nodes(model) if roundable(n)]
    shapes = {n.name: tuple(inits[n.input[1]].dims) for n in nodes}
    hess: Dict[str, np.ndarray] = {}
    for outs in layer_inputs(model, nodes, data, input_name, batch):
        for n in nodes:
            p = _patches(outs[n.input[0]], n, shapes[n.name])
            h = torch.matmul(p, p.transpose(-1, -2)).sum(0).double().numpy()
            hess[n.name] = hess[n.name] + h if n.name in hess else h
    return hess


def gptq_round(w: np.ndarray, h: np.ndarray, scale: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """Rows of ``w`` (``[rows, d]``) rounded to multiples of their ``scale`` within +-127 steps, column by column,
    each column's error spread over the columns after it as the inverse of ``h`` (``[d, d]``) says."""
    w = w.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    dead = np.diag(h) <= 0  # an input that is always zero: its weights change nothing
    h[dead, dead] = 1.0
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: H^-1 = U^T U
    s = scale.astype(np.float64)[:, None]
    q = np.empty_like(w)
    for j in range(w.shape[1]):
        q[:, j] = np.clip(np.round(w[:, j] / s[:, 0]), -QMAX, QMAX) * s[:, 0]
        err = (w[:, j] - q[:, j]) / u[j, j]
        w[:, j + 1:] -= np.outer(err, u[j, j + 1:])
    return q


def _round_layer(w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """A Conv weight ``[out, in/groups, kh, kw]`` (or Gemm rows ``[out, in]``) rounded by GPTQ per group; each
    row keeps its largest weight at +-127 steps so the quantizer's scale is the same."""
    rows = w.reshape(w.shape[0], -1).astype(np.float64)
    scale = np.abs(rows).max(axis=1) / QMAX
    scale[scale == 0] = 1.0
    groups = h.shape[0]
    per = rows.shape[0] // groups
    out = np.concatenate([gptq_round(rows[g * per:(g + 1) * per], h[g], scale[g * per:(g + 1) * per])
                          for g in range(groups)])
    top = np.abs(rows).argmax(axis=1)
    idx = np.arange(len(rows))
    out[idx, top] = np.sign(rows[idx, top]) * QMAX * scale
    return out.reshape(w.shape).astype(np.float32)


def rounded_weights(fp32_path: str, data: np.ndarray, input_name: str = "input") -> Dict[str, np.ndarray]:
    """Per roundable Conv/Gemm node: its weight (initializer layout) rounded by GPTQ on the images ``data``."""
    hess = input_hessians(fp32_path, data, input_name)
    model = onnx.load(str(fp32_path))
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for n in correctable_nodes(model):
        if n.name not in hess:
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        gemm_kn = n.op_type == "Gemm" and not _attr(n, "transB", 0)  # [in, out]: rows are columns
        r = _round_layer(w.T if gemm_kn else w, hess[n.name])
        r = r.T if gemm_kn else r
        if _on_grid(r, 1 if gemm_kn else 0):
            out[n.name] = r
        else:  # the quantizer would round it again: this layer keeps nearest rounding
            log.warning("GPTQ: %s left to nearest rounding (its rounded weight is off the quantizer's grid)", n.name)
    log.info("GPTQ rounded %d layers on %d images", len(out), len(data))
    return out


def _on_grid(w: np.ndarray, axis: int) -> bool:
    """Whether ONNX Runtime's own per-channel quantization (``axis``) gives ``w`` back unchanged."""
    return bool(np.allclose(quantized_weight(w, axis), w, rtol=1e-6, atol=0))


def rounded_model(fp32_path: str, weights: Dict[str, np.ndarray], exclude: Iterable[str] = (),
                  op_types: Iterable[str] = ("Conv", "Gemm")) -> onnx.ModelProto:
    """A copy of the fp32 model whose to-be-quantized layers carry their GPTQ-rounded weights (``exclude``: nodes
    kept in float keep their own). A weight initializer shared by several nodes is copied before editing."""
    model = onnx.load(str(fp32_path))
    ed = InitializerEditor(model)
    for n in quantized_nodes(model, exclude, op_types, weights):
        ed.set_input(n, 1, weights[n.name], f"{n.name}_weight_rounded")
    return model

