"""The multi-camera loop's GPU path on a real GPU: camera threads hand over decoded frames, the NVRTC kernel
resizes and normalises each into its batch row of the engine's device input, one engine call per round.
TensorRT cannot be installed on any machine this project reaches, so the engine is a stand-in
(tests/gpu_standin.py: the bundle's own fp32 model run by ONNX Runtime on what the device input holds); the rest
is the real loop on real CUDA. Skipped where there is no CUDA device (the development machine and CI); on a lent
GPU machine tools/gpu_check.sh runs it with EDGECV_GPU_TEST_BUNDLE pointing at a carried bundle."""
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from gpu_standin import HostModelContext, cuda_device_present, standin_backend

pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-python provides NVRTC and the driver API")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_device_present(),
                                                  reason="needs a CUDA device (none on the development machine)")]


@pytest.fixture
def gpu_bundle(request):
    path = os.environ.get("EDGECV_GPU_TEST_BUNDLE")
    return Path(path) if path else request.getfixturevalue("tiny_bundle")


def test_real_gpu_multi_camera_loop_preprocesses_into_the_engine_input(gpu_bundle, tmp_path, monkeypatch):
    from edgecv.runtime import select
    from edgecv.runtime.bundle import open_bundle
    from edgecv.runtime.gpu_preprocess import reference
    from edgecv.runtime.multi_loop import Camera, run_multi
    from edgecv.runtime.preprocess import Preprocessor
    from edgecv.runtime.run_loop import RunOptions

    bundle = open_bundle(str(gpu_bundle))
    pre = Preprocessor(bundle.preprocess)
    fp32 = gpu_bundle / bundle.artifact("onnxruntime", "fp32")["file"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    n_out = sess.get_outputs()[0].shape[1]
    rng = np.random.default_rng(0)
    cams, frames = [], {}
    for c, size in enumerate([(96, 128), (300, 200), (57, 75)]):  # three cameras, three frame sizes
        folder = tmp_path / f"cam{c}"
        folder.mkdir()
        frames[f"cam{c}"] = []
        for i in range(7):
            img = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), np.uint8), (0, 0), 3)
            cv2.imwrite(str(folder / f"{i:03d}.png"), img)
            frames[f"cam{c}"].append(cv2.imread(str(folder / f"{i:03d}.png"), cv2.IMREAD_COLOR))
        cams.append(Camera(f"cam{c}", str(folder)))

    made = []

    def open_standin(target, backend="auto", precision=None, threads=None, **kw):
        be = standin_backend((pre.channels, pre.crop, pre.crop), (n_out,), max_batch=4, context=HostModelContext,
                             onnx_path=fp32)
        made.append(be.context)  # run_multi closes the backend (and drops its context) at the end
        return be, {"backend": "tensorrt", "file": "stand-in for an engine", "precision": "fp32"}

    monkeypatch.setattr(select, "open_backend", open_standin)
    lines = []
    s = run_multi(str(gpu_bundle), cams, RunOptions(as_json=True, gpu_preprocess="on"), emit=lines.append)
    assert s["preprocess"] == "gpu" and s["workers"] == 1
    assert {c: s["cameras"][c]["frames"] for c in frames} == {c: 7 for c in frames}
    assert s["mean_batch"] > 1.5  # several cameras per engine call
    assert made[0].calls >= s["batches"]
    got = [json.loads(x) for x in lines]
    for r in got:  # the label and score the model gives the kernel's arithmetic on that very frame
        want = sess.run(None, {sess.get_inputs()[0].name: reference(pre, frames[r["camera"]][r["frame"]])[None]})[0][0]
        p = np.exp(want - want.max())
        p /= p.sum()
        assert r["index"] == int(want.argmax()), r
        assert abs(r["score"] - float(p.max())) < 1e-3, r
