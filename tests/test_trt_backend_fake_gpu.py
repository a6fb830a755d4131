"""TrtBackend.infer's buffer logic without a GPU or TensorRT engine: the CUDA memory layer and the execution
context are fakes (named so) because neither can exist here. What is tested is edgecv's own code: where
the input is staged, when the host copy is skipped, and that results come back right and independent."""
import contextlib

import numpy as np
import pytest

from edgecv.errors import DeviceError, InputSpecError
from edgecv.runtime.backends.base import TensorSpec
from edgecv.runtime.tensorrt.backend import TrtBackend


class CountingArray(np.ndarray):
    """Pinned host memory stand-in that counts item assignments (the backend's host-side input copy)."""

    writes = 0

    def __setitem__(self, key, value):
        CountingArray.writes += 1
        super().__setitem__(key, value)


class FakeGpuMem:
    """Device memory is a dict of numpy arrays; copies are synchronous. A fake: this machine has no GPU."""

    stream_handle = 0

    def __init__(self):
        self.dev = {}

    def pinned(self, shape, dtype):
        return np.zeros(shape, dtype).view(CountingArray)

    def device_alloc(self, nbytes):
        ptr = 0x1000 * (len(self.dev) + 1)
        self.dev[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def htod_async(self, ptr, host):
        self.dev[ptr][: host.nbytes] = np.frombuffer(np.ascontiguousarray(host).tobytes(), np.uint8)

    def dtoh_async(self, host, ptr):
        np.copyto(host, np.frombuffer(self.dev[ptr][: host.nbytes].tobytes(), host.dtype).reshape(host.shape))

    def synchronize(self):
        pass

    def activate(self):
        return contextlib.nullcontext()


class FakeGpuContext:
    """Stands in for an execution context: output[i] = sum of input[i] per channel."""

    def __init__(self, mem, backend):
        self.mem, self.be, self.shape = mem, backend, None

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)

    def execute_async_v3(self, stream):
        n = self.shape[0]
        x = np.frombuffer(self.mem.dev[self.be.dev["input"]][: n * 3 * 8 * 8 * 4].tobytes(), np.float32)
        y = x.reshape(n, 3, 64).sum(-1).astype(np.float32)
        self.mem.dev[self.be.dev["output"]][: y.nbytes] = np.frombuffer(y.tobytes(), np.uint8)
        return True


def fake_gpu_backend(max_batch=2):
    be = TrtBackend.__new__(TrtBackend)
    be.mem = FakeGpuMem()
    be._in = [TensorSpec("input", (-1, 3, 8, 8), np.float32)]
    be._out = [TensorSpec("output", (-1, 3), np.float32)]
    be.max_batch, be.cuda_graph, be._graphs = max_batch, False, {}
    be.host = {s.name: be.mem.pinned((max_batch,) + s.shape[1:], s.dtype) for s in be._in + be._out}
    be.dev = {s.name: be.mem.device_alloc(be.host[s.name].nbytes) for s in be._in + be._out}
    be.context = FakeGpuContext(be.mem, be)
    return be


def test_fake_gpu_input_buffer_is_staged_in_place():
    be = fake_gpu_backend()
    rng = np.random.default_rng(0)
    x = be.input_buffer(1)
    assert x.shape == (1, 3, 8, 8) and np.shares_memory(x, be.host["input"])
    kept = []
    for _ in range(3):
        x[...] = rng.standard_normal(x.shape)
        CountingArray.writes = 0
        out = be.infer(x)
        assert CountingArray.writes == 0  # the input was not copied again on the host
        np.testing.assert_allclose(out, x.reshape(1, 3, 64).sum(-1), rtol=1e-5)
        kept.append((out, out.copy()))
    assert all(np.array_equal(a, b) for a, b in kept)


def test_fake_gpu_foreign_batch_is_copied_and_checked():
    be = fake_gpu_backend()
    batch = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    CountingArray.writes = 0
    out = be.infer(batch)
    assert CountingArray.writes == 1
    np.testing.assert_allclose(out, batch.reshape(2, 3, 64).sum(-1), rtol=1e-5)
    with pytest.raises(DeviceError, match="max batch 2"):
        be.input_buffer(3)
    with pytest.raises(InputSpecError, match="channel count 1"):
        be.infer(np.zeros((1, 1, 8, 8), np.float32))


def test_fake_gpu_infer_device_runs_what_the_kernel_wrote_without_a_host_copy():
    """GPU preprocessing writes the device input itself: infer_device must not upload the host staging buffer."""
    be = fake_gpu_backend()
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    be.host["input"][...] = 7.0  # stale host staging: uploading it would give 7 * 64 per channel
    be.mem.dev[be.dev["input"]][: x.nbytes] = np.frombuffer(x.tobytes(), np.uint8)  # as the kernel writes
    np.testing.assert_allclose(be.infer_device(2), x.reshape(2, 3, 64).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(be.infer_device(1), x[:1].reshape(1, 3, 64).sum(-1), rtol=1e-5)
    with pytest.raises(DeviceError, match="max batch"):
        be.infer_device(3)
    with pytest.raises(DeviceError, match="max batch"):
        be.infer_device(0)


def test_fake_gpu_preprocessor_refused_for_an_input_of_another_size():
    from edgecv.runtime.preprocess import Preprocessor

    be = fake_gpu_backend()  # 3x8x8 input
    pre = Preprocessor({"input_size": 224, "resize": 256, "crop": 224, "channels": 3, "mean": [0.5] * 3,
                        "std": [0.5] * 3})
    assert be.gpu_preprocessor(pre) is None
