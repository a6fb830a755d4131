"""GPTQ weight rounding: the unfolded inputs are what ONNX Runtime's Conv multiplies, the rounding moves a layer's
output less than rounding to nearest, the quantizer ships the rounded weights unchanged (float layers keep their
own), and on EfficientNet-Lite0 it brings the int8 artefact closer to fp32 on images it never saw."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecv.export.bias_correction import correctable_nodes
from edgecv.export.gptq import _patches, gptq_round, input_hessians
from edgecv.export.onnx_export import export_onnx
from edgecv.export.quantize import calibrate, quantize
from tests.test_bias_correction import Net, dequantized_weights


def _conv_model(c, o, k, group, pads, strides):
    w = np.random.default_rng(0).standard_normal((o, c // group, k, k)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=group, pads=pads, strides=strides,
                            kernel_shape=[k, k])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), node, w


@pytest.mark.parametrize("c,o,k,group,pads,strides", [
    (3, 8, 3, 1, [1, 1, 1, 1], [1, 1]),      # a stem
    (8, 8, 3, 8, [0, 0, 1, 1], [2, 2]),      # depthwise, TF-style asymmetric padding, stride 2
    (8, 6, 5, 2, [2, 1, 2, 3], [1, 2]),      # grouped, odd padding and strides
    (8, 16, 1, 1, [0, 0, 0, 0], [1, 1]),     # pointwise
])
def test_patches_times_weight_is_onnxruntimes_conv(c, o, k, group, pads, strides):
    model, node, w = _conv_model(c, o, k, group, pads, strides)
    x = np.random.default_rng(1).standard_normal((2, c, 11, 9)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    p = _patches(x, node, w.shape).numpy()  # [images, groups, d, positions]
    p = p.transpose(1, 0, 3, 2).reshape(group, -1, p.shape[2])  # [groups, images x positions, d]
    rows = w.reshape(group, o // group, -1)
    got = np.stack([p[g] @ rows[g].T for g in range(group)], 0)  # [groups, positions, out per group]
    n, _, ho, wo = y.shape
    got = got.reshape(group, n, ho, wo, o // group).transpose(1, 0, 4, 2, 3).reshape(y.shape)
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-4)


def test_gptq_moves_the_output_less_than_nearest_rounding():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 32)) @ rng.standard_normal((32, 32))  # correlated inputs
    w = rng.standard_normal((16, 32))
    h = x.T @ x
    scale = np.abs(w).max(1) / 127
    q = gptq_round(w, h, scale)
    steps = q / scale[:, None]
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)  # on the grid
    assert np.abs(steps).max() <= 127 + 1e-9
    nearest = np.round(w / scale[:, None]) * scale[:, None]
    err = {k: float(np.sum(((w - v) @ x.T) ** 2)) for k, v in (("gptq", q), ("nearest", nearest))}
    assert err["gptq"] < 0.7 * err["nearest"], err


@pytest.fixture(scope="module")
def net_onnx(tmp_path_factory):
    p = tmp_path_factory.mktemp("gptq") / "net.onnx"
    export_onnx(Net().eval(), p, (3, 12, 12))
    return p, np.random.default_rng(0).random((24, 3, 12, 12), dtype=np.float32)


def test_hessians_per_group(net_onnx):
    p, x = net_onnx
    h = input_hessians(str(p), x, batch=5)  # batches that do not divide the data
    dims = {k: v.shape for k, v in h.items()}
    assert sorted(dims.values()) == sorted([(1, 27, 27), (8, 9, 9), (2, 36, 36), (1, 8, 8)]), dims
    stem = correctable_nodes(onnx.load(str(p)))[0].name
    assert np.all(np.linalg.eigvalsh(h[stem][0]) > -1e-6)  # a sum of outer products


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_the_quantizer_ships_the_rounded_weights(net_onnx, tmp_path, target):
    p, x = net_onnx
    c = calibrate(p, x, "minmax", rounding="gptq")
    assert c.input_means is None and len(c.rounded) == 4
    nodes = correctable_nodes(onnx.load(str(p)))
    fp = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(p)).graph.initializer}
    kept = nodes[1].name  # the depthwise convolution stays float
    deq = dequantized_weights(quantize(p, c, tmp_path / "q.onnx", target, exclude=[kept]))
    for n in nodes:
        if n.name == kept:
            assert not any(k.startswith(n.name) for k in deq)
            continue
        got = next(v for k, v in deq.items() if k.startswith(n.input[1]) or k.startswith(n.name))
        np.testing.assert_allclose(got.reshape(c.rounded[n.name].shape), c.rounded[n.name], rtol=0, atol=1e-6)
        assert not np.allclose(c.rounded[n.name], fp[n.input[1]], rtol=0, atol=1e-6)
    q = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    node = next(n for n in q.graph.node if n.name == kept)
    np.testing.assert_array_equal(inits[node.input[1]], fp[nodes[1].input[1]])  # float layer: its own weight


def test_unknown_rounding_is_refused(net_onnx):
    p, x = net_onnx
    with pytest.raises(ValueError, match="weight rounding"):
        calibrate(p, x, "minmax", rounding="stochastic")


@pytest.mark.slow  # Lite0 at 224 px on real photographs, a quality check (its code paths run in CI on smaller
# models): python3 -m pytest -m slow (docs/benchmarks.md); CI must fit 15 minutes on the slowest 2-core machine
def test_lite0_int8_closer_to_fp32_on_unseen_images(lite0_photos):
    """Real weights, real images: 100 calibrate, 100 others judge (KL to fp32), ONNX Runtime U8S8, GPTQ against
    nearest rounding (both without bias correction, so only the rounding differs)."""
    gptq = calibrate(lite0_photos.fp32, lite0_photos.cal, "minmax", rounding="gptq")
    kl = {"nearest": lite0_photos.nearest_kl("onnxruntime"), "gptq": lite0_photos.kl(gptq, "onnxruntime", "gptq")}
    print(kl)
    assert kl["gptq"] < 0.7 * kl["nearest"], kl


def test_export_with_gptq_records_it(tmp_path, imagenet_dir):
    """`edgecv export --weight-rounding gptq` of a MobileNetV2 at 64 px: the int8 artefact is quantized from GPTQ
    weights, without bias correction, and the manifest says so."""
    import json

    from conftest import export_mobilenet_caltech

    out = export_mobilenet_caltech(tmp_path, imagenet_dir, {"prune": 0.0, "distill": False, "qat_epochs": 0,
                                                           "weight_rounding": "gptq"})
    arts = [a for a in json.loads((out / "manifest.json").read_text())["artifacts"] if a["precision"] == "int8"]
    assert arts and all(a["calibration"]["weight_rounding"] == "gptq" for a in arts)
    assert not any(a["calibration"]["bias_correction"] for a in arts)
