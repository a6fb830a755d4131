"""The int8 artefacts answer with float logits: ONNX Runtime's quantizer rounds a graph output (the classifier's
Gemm) to 256 levels, which only moves near-tied classes; edgecv drops that Q/DQ pair (quantize.float_outputs)."""
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgecv.export import quantize as qmod
from edgecv.export.onnx_export import export_onnx
from edgecv.runtime.backends.ort import OrtBackend


class SmallClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16, 40)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def fp32_and_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("float_outputs")
    fp32 = d / "fp32.onnx"
    export_onnx(SmallClassifier().eval(), fp32, (3, 16, 16))
    x = np.random.default_rng(0).random((64, 3, 16, 16), dtype=np.float32)
    return fp32, x, qmod.calibrate(fp32, x, "minmax", bias_correction=False)


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_int8_artefact_outputs_float_logits(fp32_and_data, tmp_path, target, monkeypatch):
    fp32, x, cal = fp32_and_data
    out = tmp_path / "int8.onnx"
    qmod.quantize(fp32, cal, out, target)
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    producer = {o: n for n in m.graph.node for o in n.output}
    assert [producer[o.name].op_type for o in m.graph.output] == ["Gemm"]
    ref = OrtBackend(str(fp32), threads=1).infer(x)
    got = OrtBackend(str(out), threads=1).infer(x)
    assert len(np.unique(got)) > 0.9 * got.size  # not rounded to a grid
    # the quantizer's own output (Q/DQ on the logits kept) for comparison, where it adds one
    monkeypatch.setattr(qmod, "float_outputs", lambda proto: proto)
    raw = tmp_path / "raw.onnx"
    qmod.quantize(fp32, cal, raw, target)
    raw_producer = {o: n for n in onnx.load(str(raw)).graph.node for o in n.output}
    if target == "onnxruntime":
        assert raw_producer["logits"].op_type == "DequantizeLinear"  # what ORT's quantizer writes on its own
    if raw_producer["logits"].op_type == "DequantizeLinear":
        rounded = OrtBackend(str(raw), threads=1).infer(x)
        assert len(np.unique(rounded)) <= 256
        assert np.abs(got - ref).mean() < np.abs(rounded - ref).mean()


def test_float_outputs_leaves_an_unquantized_output_alone(fp32_and_data):
    fp32, _, _ = fp32_and_data
    m = onnx.load(str(fp32))
    before = m.SerializeToString()
    assert qmod.float_outputs(m).SerializeToString() == before
