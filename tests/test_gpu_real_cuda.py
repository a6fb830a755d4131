"""TrtBackend on a real GPU with a stand-in for the TensorRT engine (TensorRT is on no machine this project can
reach; the lent GPU machines have CUDA, cuda-python and NVRTC but not TensorRT).

Everything except the engine is real: cuda-python memory and stream, page-locked staging, CUDA-graph capture of the
enqueue, and the NVRTC preprocessing kernel writing the device input. The stand-in execution context launches a real
CUDA kernel (per-channel mean of the input) on the stream TrtBackend passes to ``execute_async_v3``, so the tests
check what an engine would see: which bytes are in the device input when it runs, and that its output comes back
in stream order. Skipped where there is no CUDA device (the development machine and CI).
"""
import ctypes

import cv2
import numpy as np
import pytest

from edgecv.runtime.backend import TensorSpec
from edgecv.runtime.preprocess import Preprocessor

pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-python provides NVRTC and the driver API")


def _cuda_device():
    try:
        from cuda.bindings import runtime as rt

        err, n = rt.cudaGetDeviceCount()
        return int(err) == 0 and n > 0
    except Exception:  # noqa: BLE001 - no driver here
        return False


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _cuda_device(), reason="needs a CUDA device (none on the development machine)")]

SPEC = {"input_size": 224, "resize": 256, "crop": 224, "channels": 3, "scale": 1 / 255,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

STANDIN_SOURCE = r"""
extern "C" __global__ void standin_engine(const float* __restrict__ x, float* __restrict__ y, int channels, int hw)
{
    __shared__ float part[256];
    const int n = blockIdx.x, c = blockIdx.y;
    const float* plane = x + ((size_t)n * channels + c) * hw;
    float acc = 0.f;
    for (int i = threadIdx.x; i < hw; i += blockDim.x) acc += plane[i];
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) part[threadIdx.x] += part[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) y[n * channels + c] = part[0] / hw;
}
"""


class StandinEngineContext:
    """Stands in for a TensorRT execution context (TensorRT cannot be installed here): a real CUDA kernel,
    output[n, c] = mean of input[n, c], launched on the stream it is given."""

    def __init__(self, backend):
        from cuda.bindings import driver

        from edgecv.runtime.gpu_preprocess import load_kernel

        self.drv, self.be, self.shape, self.addr = driver, backend, None, {}
        self.module, self.kernel, _ = load_kernel(STANDIN_SOURCE, "standin_engine")

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)

    def execute_async_v3(self, stream):
        n, c, h, w = self.shape
        args = ((self.addr["input"], self.addr["output"], c, h * w),
                (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int))
        err, = self.drv.cuLaunchKernel(self.kernel, n, c, 1, 256, 1, 1, 0, self.drv.CUstream(stream), args, 0)
        return int(err) == 0

    def close(self):
        self.drv.cuModuleUnload(self.module)


@pytest.fixture(params=[False, True], ids=["plain", "cuda_graph"])
def gpu_backend(request):
    """TrtBackend's own buffer set-up on real CUDA memory, with the stand-in context in place of an engine's."""
    from edgecv.runtime.cuda_mem import open_cuda_mem
    from edgecv.runtime.trt_backend import TrtBackend

    be = TrtBackend.__new__(TrtBackend)
    be.mem = open_cuda_mem("cuda-python")
    be._in = [TensorSpec("input", (-1, 3, 224, 224), np.float32)]
    be._out = [TensorSpec("output", (-1, 3), np.float32)]
    be.max_batch, be._graphs, be._closers = 4, {}, []
    be.cuda_graph = request.param
    be.host = {s.name: be.mem.pinned((4,) + s.shape[1:], s.dtype) for s in be._in + be._out}
    be.dev = {s.name: be.mem.device_alloc(be.host[s.name].nbytes) for s in be._in + be._out}
    be.context = StandinEngineContext(be)
    for name, ptr in be.dev.items():
        be.context.set_tensor_address(name, ptr)
    be.runtime = be.engine = None
    yield be
    be._closers.append(be.context.close)
    be.close()


def photo_like(shape, seed):
    return cv2.GaussianBlur(np.random.default_rng(seed).integers(0, 256, shape, np.uint8), (0, 0), 2)


def test_real_gpu_standin_engine_host_input_round_trips(gpu_backend):
    rng = np.random.default_rng(0)
    for n in (1, 4, 2, 4):  # shape changes between calls: one graph per batch size
        x = rng.standard_normal((n, 3, 224, 224)).astype(np.float32)
        np.testing.assert_allclose(gpu_backend.infer(x), x.mean((2, 3)), atol=1e-5)
    buf = gpu_backend.input_buffer(3)  # filled in place: infer skips its host copy
    buf[...] = rng.standard_normal(buf.shape)
    np.testing.assert_allclose(gpu_backend.infer(buf), buf.mean((2, 3)), atol=1e-5)


def test_real_gpu_preprocessing_feeds_the_engine_in_stream_order(gpu_backend):
    """Frames of four sizes in rows 0..3, 12 rounds with new frames each: the engine always reads this round's."""
    from edgecv.runtime.gpu_preprocess import reference

    pre = Preprocessor(SPEC)
    run = gpu_backend.gpu_preprocessor(pre)
    assert run is not None
    shapes = [(480, 640, 3), (1080, 1920, 3), (200, 300, 3), (480, 640, 4)]
    for k in range(12):
        frames = [photo_like(s, seed=10 * k + i) for i, s in enumerate(shapes)]
        n = 4 if k % 3 else 2
        for i in range(n):
            run(frames[i], i)
        want = np.stack([reference(pre, f).mean((1, 2)) for f in frames[:n]])
        np.testing.assert_allclose(gpu_backend.infer_device(n), want, atol=1e-4)
