"""The camera loops' GPU path on a real GPU: decoded frames go to the device, the NVRTC kernel resizes and normalises
each into its batch row of the engine's device input, one engine call per round. TensorRT cannot be installed on
any machine this project reaches, so the engine is a stand-in (tests/gpu_standin.py: the bundle's own fp32 model
run by ONNX Runtime on what the device input holds); the rest is the real loop on real CUDA. Skipped where there is
no CUDA device (the development machine and CI); on a lent GPU machine tools/gpu_check.sh runs it with
EDGECV_GPU_TEST_BUNDLE pointing at a carried bundle."""
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


@pytest.fixture
def standin(gpu_bundle, monkeypatch):
    """The bundle's preprocessing and fp32 session; ``open_backend`` patched to give the stand-in engine."""
    import onnxruntime as ort

    from edgecv.bundle.reader import open_bundle
    from edgecv.runtime.backends import select
    from edgecv.runtime.preprocess import Preprocessor

    bundle = open_bundle(str(gpu_bundle))
    pre = Preprocessor(bundle.preprocess)
    fp32 = gpu_bundle / bundle.artifact("onnxruntime", "fp32")["file"]
    sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    contexts = []

    def open_standin(target, backend="auto", precision=None, threads=None, **kw):
        be = standin_backend((pre.channels, pre.crop, pre.crop), (sess.get_outputs()[0].shape[1],), max_batch=4,
                             context=HostModelContext, onnx_path=fp32)
        contexts.append(be.context)  # the loop closes the backend (and drops its context) at the end
        return be, {"backend": "tensorrt", "file": "stand-in for an engine", "precision": "fp32"}

    monkeypatch.setattr(select, "open_backend", open_standin)
    return pre, sess, contexts


def folder_cameras(root: Path, sizes, n=7):
    """One folder of smooth random photos per frame size: {camera id: (folder, decoded frames in order)}."""
    rng = np.random.default_rng(0)
    cams = {}
    for c, size in enumerate(sizes):
        folder = root / f"cam{c}"
        folder.mkdir()
        frames = []
        for i in range(n):
            cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), np.uint8),
                                                                       (0, 0), 3))
            frames.append(cv2.imread(str(folder / f"{i:03d}.png"), cv2.IMREAD_COLOR))
        cams[f"cam{c}"] = (folder, frames)
    return cams


def assert_model_answers(lines, frames_of, pre, sess):
    """Every line's label and score are the model's on the kernel's arithmetic for that very frame."""
    from edgecv.runtime.tensorrt.gpu_preprocess import reference

    for r in map(json.loads, lines):
        want = sess.run(None, {sess.get_inputs()[0].name: reference(pre, frames_of(r)[r["frame"]])[None]})[0][0]
        p = np.exp(want - want.max())
        assert r["index"] == int(want.argmax()), r
        assert abs(r["score"] - float(p.max() / p.sum())) < 1e-3, r


def test_real_gpu_multi_camera_loop_preprocesses_into_the_engine_input(gpu_bundle, standin, tmp_path):
    from edgecv.runtime.stream.cameras import Camera
    from edgecv.runtime.stream.multi import run_multi
    from edgecv.runtime.stream.options import RunOptions

    pre, sess, contexts = standin
    cams = folder_cameras(tmp_path, [(96, 128), (300, 200), (57, 75)])  # three cameras, three frame sizes
    lines = []
    s = run_multi(str(gpu_bundle), [Camera(c, str(f)) for c, (f, _) in cams.items()],
                  RunOptions(as_json=True, gpu_preprocess="on"), emit=lines.append)
    assert s["preprocess"] == "gpu" and s["workers"] == 1
    assert {c: s["cameras"][c]["frames"] for c in cams} == {c: 7 for c in cams}
    assert s["mean_batch"] > 1.5  # several cameras per engine call
    assert contexts[0].calls >= s["batches"]
    assert len(lines) == 21
    assert_model_answers(lines, lambda r: cams[r["camera"]][1], pre, sess)


def test_real_gpu_single_camera_loop_preprocesses_into_the_engine_input(gpu_bundle, standin, tmp_path):
    from edgecv.runtime.stream.loop import run

    pre, sess, contexts = standin
    (folder, frames), = folder_cameras(tmp_path, [(240, 320)], n=9).values()
    lines = []
    s = run(str(gpu_bundle), str(folder), as_json=True, gpu_preprocess="on", emit=lines.append)
    assert s["frames"] == 9 and contexts[0].calls >= 9
    assert s["resize"].startswith("gpu")  # the summary says where preprocessing ran
    assert len(lines) == 9
    assert_model_answers(lines, lambda r: frames, pre, sess)
