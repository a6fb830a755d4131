"""The camera loops' GPU-preprocessing path: frames go to the backend's GPU preprocessor (one batch row each) and
the engine runs on the device input. The GPU is a fake here (named so: this machine has none): its "kernel" is
the kernel's numpy reference writing into a host array that stands in for the device input, and its engine is
ONNX Runtime on that array. What is tested is edgecv's own plumbing: row order, batch sizes, no CPU
preprocessing, and the clear refusals on a CPU runtime."""
import json

import cv2
import numpy as np
import pytest

from edgecv.errors import DeviceError
from edgecv.metrics import softmax
from edgecv.runtime.backends import select
from edgecv.runtime.backends.ort import OrtBackend
from edgecv.runtime.stream.cameras import Camera
from edgecv.runtime.stream.loop import run
from edgecv.runtime.stream.multi import run_multi
from edgecv.runtime.stream.options import RunOptions
from edgecv.runtime.tensorrt.gpu_preprocess import reference


def make_video(path, n, level0, step, size=(96, 72)):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, size)
    for i in range(n):
        img = np.full((size[1], size[0], 3), (level0 + i * step) % 255, np.uint8)
        img[:, : size[0] // 2, 1] = 255 - img[:, : size[0] // 2, 1]  # some structure for the model to see
        w.write(img)
    w.release()
    return path


def decoded(path):
    cap, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            return frames
        frames.append(f)


class FakeGpuOrtBackend(OrtBackend):
    """ONNX Runtime behind a fake GPU input: gpu_preprocessor fills rows of ``device_input`` with the kernel's
    reference arithmetic; infer_device runs those rows. Counts the calls."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.device_input = None
        self.batches, self.cpu_infers = [], 0

    def gpu_preprocessor(self, pre):
        self.device_input = np.zeros((8, pre.channels, pre.crop, pre.crop), np.float32)

        def kernel(frame, row=0):
            self.device_input[row] = reference(pre, frame)
        return kernel

    def infer_device(self, n):
        self.batches.append(n)
        return OrtBackend.infer(self, self.device_input[:n])

    def infer(self, batch):
        self.cpu_infers += 1
        return super().infer(batch)


@pytest.fixture
def fake_gpu(monkeypatch):
    made = []
    real = select.open_backend

    def open_fake(bundle, backend="auto", precision=None, **kw):
        be, info = real(bundle, "onnxruntime", precision, threads=kw.get("threads"))
        fake = FakeGpuOrtBackend(be.path, threads=1)
        be.close()
        made.append(fake)
        return fake, info

    monkeypatch.setattr(select, "open_backend", open_fake)
    return made


def expected_scores(bundle, frames):
    from edgecv.bundle.reader import open_bundle
    from edgecv.runtime.preprocess import Preprocessor

    b = open_bundle(bundle)
    pre = Preprocessor(b.preprocess)
    be = OrtBackend(str(b.path(b.artifact("onnxruntime")["file"])), threads=1)
    logits = be.infer(np.stack([reference(pre, f) for f in frames]))
    return np.array([softmax(row).max() for row in logits])


def test_fake_gpu_multi_camera_rows_follow_the_cameras(tiny_bundle, tmp_path, fake_gpu):
    vids = [make_video(tmp_path / f"c{i}.mp4", 12, 20 + 60 * i, 9) for i in range(3)]
    lines = []
    s = run_multi(str(tiny_bundle), [Camera(f"cam{i}", str(v)) for i, v in enumerate(vids)],
                  RunOptions(as_json=True), emit=lines.append)
    be = fake_gpu[0]
    assert s["preprocess"] == "gpu" and s["frames"] == 36
    assert be.cpu_infers == 3  # the warm-up, one call per batch size 1..3; every frame ran on the device input
    assert sum(be.batches) == 36 and max(be.batches) <= 3
    rec = [json.loads(x) for x in lines]
    for i, v in enumerate(vids):
        mine = [r for r in rec if r["camera"] == f"cam{i}"]
        want = expected_scores(tiny_bundle, decoded(v))
        assert len(mine) == 12
        np.testing.assert_allclose([r["score"] for r in mine], want, rtol=1e-4)


def test_fake_gpu_single_camera_uses_the_device_input(tiny_bundle, tmp_path, fake_gpu):
    v = make_video(tmp_path / "c.mp4", 8, 30, 20)
    lines = []
    s = run(str(tiny_bundle), str(v), "auto", as_json=True, emit=lines.append)
    assert s["resize"].startswith("gpu") and fake_gpu[0].batches == [1] * 8 and fake_gpu[0].cpu_infers == 1
    np.testing.assert_allclose([json.loads(x)["score"] for x in lines], expected_scores(tiny_bundle, decoded(v)),
                               rtol=1e-4)
    s = run(str(tiny_bundle), str(v), "auto", gpu_preprocess="off", emit=lambda _: None)
    assert s["resize"] == "auto" and fake_gpu[1].batches == [] and fake_gpu[1].cpu_infers == 1 + 8


def test_gpu_preprocess_on_a_cpu_runtime(tiny_bundle, tmp_path):
    v = make_video(tmp_path / "c.mp4", 3, 30, 20)
    s = run(str(tiny_bundle), str(v), "onnxruntime", emit=lambda _: None)  # auto: the CPU path, silently
    assert s["resize"] == "auto" and s["frames"] == 3
    with pytest.raises(DeviceError, match="not on a CUDA device"):
        run(str(tiny_bundle), str(v), "onnxruntime", gpu_preprocess="on", emit=lambda _: None)
    with pytest.raises(DeviceError, match="not on a CUDA device"):
        run_multi(str(tiny_bundle), [Camera("a", str(v)), Camera("b", str(v))],
                  RunOptions(backend="onnxruntime", gpu_preprocess="on"), emit=lambda _: None)
    with pytest.raises(ValueError, match="gpu_preprocess must be one of"):
        run(str(tiny_bundle), str(v), "onnxruntime", gpu_preprocess="yes", emit=lambda _: None)
