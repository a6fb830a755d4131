"""GPU test helpers: whether a CUDA device is present, the ImageNet preprocessing spec and photo-like frames the GPU
tests share, and stand-ins for a TensorRT engine on a real GPU (TensorRT is on no machine this project can reach; the lent GPU
machines have CUDA, cuda-python and NVRTC). ``standin_backend`` is a real TrtBackend (its own buffers, page-locked
staging, stream, CUDA-graph capture, GPU preprocessing) whose execution context is one of these:

- ``MeanKernelContext``: a real CUDA kernel, output[n, c] = mean of input[n, c], on the stream it is given;
- ``HostModelContext``: the real model on the host (ONNX Runtime): it waits for the stream, copies the device
  input down, runs the model and copies the logits up, so a loop on it answers with the model's real labels.
"""
import ctypes

import numpy as np

from edgecv.runtime.backends.base import TensorSpec

IMAGENET_SPEC = {"input_size": 224, "resize": 256, "crop": 224, "channels": 3, "scale": 1 / 255,
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def photo_like(shape, seed=0):
    """Smooth noise: resampling differences show up as they would on photographs, not as aliasing of pure noise."""
    import cv2

    return cv2.GaussianBlur(np.random.default_rng(seed).integers(0, 256, shape, np.uint8), (0, 0), 2)


def cuda_device_present() -> bool:
    try:
        from cuda.bindings import runtime as rt

        err, n = rt.cudaGetDeviceCount()
        return int(err) == 0 and n > 0
    except Exception:  # noqa: BLE001 - no driver here
        return False


MEAN_SOURCE = r"""
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


class _Context:
    def __init__(self):
        self.shape, self.addr = None, {}

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)

    def close(self):
        pass


class MeanKernelContext(_Context):
    """Stands in for a TensorRT execution context: a CUDA kernel launched on the stream it is given."""

    def __init__(self, mem):
        from cuda.bindings import driver

        from edgecv.runtime.tensorrt.gpu_preprocess import load_kernel

        super().__init__()
        self.drv = driver
        self.module, self.kernel, _ = load_kernel(MEAN_SOURCE, "standin_engine")

    def execute_async_v3(self, stream):
        n, c, h, w = self.shape
        args = ((self.addr["input"], self.addr["output"], c, h * w),
                (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int))
        err, = self.drv.cuLaunchKernel(self.kernel, n, c, 1, 256, 1, 1, 0, self.drv.CUstream(stream), args, 0)
        return int(err) == 0

    def close(self):
        self.drv.cuModuleUnload(self.module)


class HostModelContext(_Context):
    """Stands in for a TensorRT execution context: the model itself, run by ONNX Runtime on the host, on what the
    device input holds when the stream reaches this call."""

    def __init__(self, mem, onnx_path):
        import onnxruntime as ort

        super().__init__()
        self.mem = mem
        self.sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.calls, self._x = 0, {}

    def execute_async_v3(self, stream):
        n = self.shape[0]
        x = self._x.get(n)
        if x is None:
            x = self._x[n] = self.mem.pinned(self.shape, np.float32)
        self.mem.dtoh_async(x, self.addr["input"])
        self.mem.synchronize()  # the GPU preprocessing kernel enqueued before this call has finished
        y = np.ascontiguousarray(self.sess.run(None, {self.sess.get_inputs()[0].name: x})[0], np.float32)
        self.mem.htod_async(self.addr["output"], y)
        self.calls += 1
        return y.shape[0] == n


def standin_backend(in_shape, out_shape, max_batch=4, cuda_graph=False, context=MeanKernelContext, **ctx_kw):
    """A TrtBackend on real cuda-python memory, with ``context`` in place of a TensorRT engine's."""
    from edgecv.runtime.tensorrt.backend import TrtBackend
    from edgecv.runtime.tensorrt.cuda_mem import open_cuda_mem

    be = TrtBackend.__new__(TrtBackend)
    be.mem = open_cuda_mem("cuda-python")
    be._in = [TensorSpec("input", (-1, *in_shape), np.float32)]
    be._out = [TensorSpec("output", (-1, *out_shape), np.float32)]
    be.max_batch, be._graphs, be._closers, be.cuda_graph = max_batch, {}, [], cuda_graph
    be.host = {s.name: be.mem.pinned((max_batch,) + s.shape[1:], s.dtype) for s in be._in + be._out}
    be.dev = {s.name: be.mem.device_alloc(be.host[s.name].nbytes) for s in be._in + be._out}
    be.context = context(be.mem, **ctx_kw)
    for name, ptr in be.dev.items():
        be.context.set_tensor_address(name, ptr)
    be.runtime = be.engine = None
    be._closers.append(be.context.close)
    return be
