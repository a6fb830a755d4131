"""Polygraphy's ONNX Runtime runner as a second opinion on the bundle's ONNX artefacts."""
import numpy as np
import onnxruntime as ort

from edgecv.bundle.reader import open_bundle
from edgecv.runtime.backends.ort import OrtBackend


def test_polygraphy_agrees_with_edgecv_runtime(tiny_bundle):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    b = open_bundle(tiny_bundle)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for art in b.manifest["artifacts"]:
        path = str(b.path(art["file"]))
        ours = OrtBackend(path).infer(x)
        if art["precision"] == "fp32":
            with OnnxrtRunner(SessionFromOnnx(path, providers=["CPUExecutionProvider"])) as runner:
                theirs = runner.infer({"input": x})["logits"]
            assert np.array_equal(ours, theirs), art["file"]  # same model, same provider: bit-exact
        else:
            # int8: against the Q/DQ graph as written (no graph optimisation). ONNX Runtime's default session
            # re-quantizes float biases and fallback layers (WeightBiasQuantization), which edgecv turns off
            # because TensorRT keeps them float (tests/test_fallback_float.py).
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            with OnnxrtRunner(sess) as runner:
                theirs = runner.infer({"input": x})["logits"]
            assert np.allclose(ours, theirs, atol=1e-5), art["file"]
            assert (ours.argmax(1) == theirs.argmax(1)).all()
