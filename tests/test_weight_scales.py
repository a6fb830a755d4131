"""Weight scales computed once: edgecv hands ONNX Runtime's own per-channel scales back to its quantizer as
TensorQuantOverrides (quantize.weight_scale_overrides), so that the fallback search's ~50 quantizations per target do
not each recompute them. The files must be the same, byte for byte, as the quantizer's own."""
import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgecv import targets
from edgecv.export import quantize as qmod
from edgecv.export.onnx_export import export_onnx


class Net(nn.Module):
    """A stem, a depthwise and a pointwise convolution, a residual Add and a classifier (Gemm with B transposed)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 24)

    def forward(self, x):
        h = torch.clamp(self.stem(x), 0, 6)
        h = h + self.pw(torch.clamp(self.dw(h), 0, 6))
        return self.fc(h.mean((2, 3)))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("weight_scales")
    fp32 = d / "fp32.onnx"
    export_onnx(Net().eval(), fp32, (3, 16, 16))
    x = np.random.default_rng(0).random((32, 3, 16, 16), dtype=np.float32)
    return fp32, x


def own_scales(target: str):
    """The target with an empty override table: ONNX Runtime computes every scale itself."""
    t = targets.get(target)
    return dataclasses.replace(t, quant=dict(t.quant, TensorQuantOverrides={}))


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime", "openvino"])
def test_reused_weight_scales_write_the_quantizers_own_file(model, tmp_path, target, rounding):
    fp32, x = model
    cal = qmod.calibrate(fp32, x, "minmax", rounding=rounding)
    nodes = qmod.quantizable_nodes(fp32)
    assert len(nodes) == 4
    for exclude in ([], [nodes[1]], [nodes[0], nodes[-1]], [nodes[0]]):
        own = qmod.quantize(fp32, cal, tmp_path / "own.onnx", own_scales(target), exclude=exclude)
        reused = qmod.quantize(fp32, cal, tmp_path / "reused.onnx", target, exclude=exclude)
        assert reused.SerializeToString() == own.SerializeToString(), exclude
    # Computed once per weight: GPTQ rounds a layer only where it is quantized, so an excluded layer's float
    # weight is never asked for; nearest rounding asks for the same four weights every time.
    assert len(cal.weight_scales) == 4


def test_overrides_follow_the_quantizers_channel_axes(tmp_path):
    """Conv and a Gemm with B transposed are per-channel on axis 0; a Gemm without on axis 1; a shared weight is left
    to the quantizer."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "w")       # Gemm, transB=0: [K, N]
    wt = numpy_helper.from_array(rng.standard_normal((5, 6)).astype(np.float32), "wt")     # Gemm, transB=1: [N, K]
    shared = numpy_helper.from_array(rng.standard_normal((6, 6)).astype(np.float32), "s")  # read by two Gemms
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["a"], name="g0"),
         helper.make_node("Gemm", ["a", "s"], ["b"], name="g1"),
         helper.make_node("Gemm", ["b", "s"], ["c"], name="g2"),
         helper.make_node("Gemm", ["c", "wt"], ["y"], name="g3", transB=1)],
        "gemms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], [w, wt, shared])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert qmod.per_channel_weights(m) == {"w": 1, "wt": 0}
    assert qmod.per_channel_weights(m, exclude=["g3"]) == {"w": 1}
    p = tmp_path / "gemms.onnx"
    onnx.save(m, str(p))
    x = rng.standard_normal((16, 8)).astype(np.float32)
    cal = qmod.calibrate(p, x, "minmax", input_name="x", bias_correction=False)
    own = qmod.quantize(p, cal, tmp_path / "own.onnx", own_scales("onnxruntime"), op_types=["Gemm"])
    reused = qmod.quantize(p, cal, tmp_path / "reused.onnx", "onnxruntime", op_types=["Gemm"])
    assert reused.SerializeToString() == own.SerializeToString()
    scales = {t.name: numpy_helper.to_array(t) for t in reused.graph.initializer}
    assert scales["w_scale"].shape == (6,) and scales["wt_scale"].shape == (5,)
