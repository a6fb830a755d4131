"""Polygraphy's ONNX Runtime runner as a second opinion on the bundle's ONNX artefacts."""
import numpy as np

from edgecv.runtime.bundle import open_bundle
from edgecv.runtime.ort_backend import OrtBackend


def test_polygraphy_agrees_with_edgecv_runtime(tiny_bundle):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    b = open_bundle(tiny_bundle)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    for art in b.manifest["artifacts"]:
        path = str(b.path(art["file"]))
        with OnnxrtRunner(SessionFromOnnx(path, providers=["CPUExecutionProvider"])) as runner:
            theirs = runner.infer({"input": x})["logits"]
        ours = OrtBackend(path).infer(x)
        if art["precision"] == "fp32":
            assert np.array_equal(ours, theirs), art["file"]  # same model, same provider: bit-exact
        else:
            # int8: both are ONNX Runtime, but thread scheduling may reorder int32 sums; results must agree
            assert np.allclose(ours, theirs, atol=1e-5), art["file"]
            assert (ours.argmax(1) == theirs.argmax(1)).all()
