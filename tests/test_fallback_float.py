"""A layer the export keeps in float (per-layer fallback) must run in float on every CPU runtime.

ONNX Runtime 1.20 on quantizes, per tensor, the weight of a float Conv that sits between DequantizeLinear and
QuantizeLinear (its "WeightBiasQuantization" transformer). A depthwise convolution whose channels differ in scale
then loses its small channels: the fallback that was meant to fix a layer breaks it instead.
"""
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgecv.export.onnx_export import export_onnx
from edgecv.export.quantize import calibrate, quantize
from edgecv.runtime.backends.ort import OrtBackend


class DepthwiseNet(nn.Module):
    """conv -> ReLU -> depthwise conv (channel scales 1e-3 .. 1) -> ReLU -> 1x1 conv that undoes those scales."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 4, 1)
        scales = torch.logspace(-3, 0, 8)
        with torch.no_grad():
            self.dw.weight.copy_(torch.rand(8, 1, 3, 3, generator=g) * scales[:, None, None, None])
            self.dw.bias.zero_()
            self.pw.weight.copy_(torch.randn(4, 8, 1, 1, generator=g) / scales[None, :, None, None])
        self.act = nn.ReLU()

    def forward(self, x):
        return self.pw(self.act(self.dw(self.act(self.stem(x))))).mean((2, 3))


@pytest.fixture(scope="module")
def qdq_with_float_depthwise(tmp_path_factory):
    d = tmp_path_factory.mktemp("fallback")
    fp32 = d / "fp32.onnx"
    export_onnx(DepthwiseNet().eval(), fp32, (3, 16, 16))
    x = np.random.default_rng(0).random((32, 3, 16, 16), dtype=np.float32)
    dw = next(n.name for n in onnx.load(str(fp32)).graph.node
              if n.op_type == "Conv" and any(a.name == "group" and a.i == 8 for a in n.attribute))
    q = d / "int8_dw_float.onnx"
    quantize(fp32, calibrate(fp32, x, "minmax"), q, "onnxruntime", exclude=[dw])
    return q, dw, x


def test_fallback_layer_stays_float_in_the_qdq_file(qdq_with_float_depthwise):
    q, dw, _ = qdq_with_float_depthwise
    g = onnx.load(str(q)).graph
    node = next(n for n in g.node if n.name == dw)
    assert node.input[1] in {i.name for i in g.initializer}, "the fallback conv's weight must be a float initializer"


def test_fallback_layer_runs_float_in_onnxruntime(qdq_with_float_depthwise):
    """edgecv's ORT session answers as the Q/DQ graph means (reference: no graph optimisation at all)."""
    import onnxruntime as ort

    q, _, x = qdq_with_float_depthwise
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = OrtBackend(str(q), threads=1).infer(x)
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 1e-3 * scale
    # what ORT's default optimisation does to the same file: the small depthwise channels collapse
    bad = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    if np.abs(bad - ref).max() > 0.05 * scale:  # this ORT has the transformer: edgecv must not inherit its error
        assert np.abs(got - ref).max() < 0.02 * np.abs(bad - ref).max()
