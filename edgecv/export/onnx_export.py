"""PyTorch -> ONNX (opset >= 17, dynamic batch), checked against PyTorch on real images."""
from __future__ import annotations

import io
import os
import warnings
from typing import Dict

import numpy as np
import onnx
import torch
from torch import nn

from edgecv.utils.io import atomic_write_bytes

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape, opset: int = 17) -> onnx.ModelProto:
    """Export with the TorchScript exporter: it folds BatchNorm into Conv and names nodes after modules
    (``/features/features.0/Conv``), which lets profiles map layers back to PyTorch modules."""
    model = model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, *input_shape), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    proto = _drop_identities(proto)
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())
    return proto


def _drop_identities(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Remove Identity nodes that only alias initializers (TorchScript leaves them for shared weights)."""
    g = proto.graph
    inits = {i.name for i in g.initializer}
    outputs = {o.name for o in g.output}
    rename = {}
    keep = []
    for n in g.node:
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs:
            rename[n.output[0]] = n.input[0]
        else:
            keep.append(n)
    for n in keep:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    del g.node[:]
    g.node.extend(keep)
    return proto


def compare_with_torch(model: nn.Module, onnx_path: str, batch: torch.Tensor) -> Dict[str, float]:
    """Max abs logit difference and top-1 agreement between PyTorch and ONNX Runtime on ``batch``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model.eval()(batch).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: batch.numpy()})[0]
    return {"max_abs_diff": float(np.abs(ref - got).max()),
            "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()), "n": int(batch.shape[0])}
