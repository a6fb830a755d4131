"""The small CUDA memory/stream interface the TensorRT backend needs, on pycuda or cuda-python.

pycuda: retains the device's *primary* context (the one the CUDA runtime, PyTorch and CuPy use) and
pushes/pops it around every call, so other threads and libraries can share the GPU. Never
``pycuda.autoinit`` (it creates a private context and owns the process). cuda-python's runtime API
uses the primary context by itself. Both expose: pinned host arrays, device buffers, one stream,
async copies, synchronize, and (cuda-python) CUDA-graph capture.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np

from edgecv.errors import DeviceError


class CudaMem:
    name = "none"

    def pinned(self, shape, dtype) -> np.ndarray:
        raise NotImplementedError

    def device_alloc(self, nbytes: int) -> int:
        raise NotImplementedError

    def htod_async(self, dev_ptr: int, host: np.ndarray) -> None:
        raise NotImplementedError

    def dtoh_async(self, host: np.ndarray, dev_ptr: int) -> None:
        raise NotImplementedError

    @property
    def stream_handle(self) -> int:
        raise NotImplementedError

    def synchronize(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def activate(self):
        yield

    def close(self) -> None:
        pass


class PycudaMem(CudaMem):
    name = "pycuda"

    def __init__(self, device: int = 0):
        import pycuda.driver as cuda

        self.cuda = cuda
        cuda.init()
        self.ctx = cuda.Device(device).retain_primary_context()
        self._allocs = []
        with self.activate():
            self.stream = cuda.Stream()

    @contextlib.contextmanager
    def activate(self):
        self.ctx.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def pinned(self, shape, dtype) -> np.ndarray:
        with self.activate():
            return self.cuda.pagelocked_empty(shape, dtype)

    def device_alloc(self, nbytes: int) -> int:
        with self.activate():
            buf = self.cuda.mem_alloc(max(1, nbytes))
        self._allocs.append(buf)
        return int(buf)

    def htod_async(self, dev_ptr: int, host: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(dev_ptr, host, self.stream)

    def dtoh_async(self, host: np.ndarray, dev_ptr: int) -> None:
        self.cuda.memcpy_dtoh_async(host, dev_ptr, self.stream)

    @property
    def stream_handle(self) -> int:
        return self.stream.handle

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        with self.activate():
            for b in self._allocs:
                b.free()
        self._allocs.clear()
        self.ctx.detach()


def _check(result, what: Optional[str] = None):
    """cuda-python returns (err, *values); raise on error (naming ``what`` failed, when given), return the values."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise DeviceError(f"CUDA {what} failed: {err}" if what else f"CUDA error {int(err)} ({err})")
    return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)


class CudaPythonMem(CudaMem):
    name = "cuda-python"

    def __init__(self, device: int = 0):
        from edgecv.runtime.tensorrt.compat import import_cudart

        cudart = import_cudart()
        if cudart is None:
            raise ImportError("cuda-python is not installed (pip install cuda-python)")
        self.rt = cudart
        _check(cudart.cudaSetDevice(device))
        self.stream = _check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        self._dev, self._host = [], []

    def pinned(self, shape, dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = _check(self.rt.cudaMallocHost(max(1, nbytes)))
        self._host.append(ptr)
        import ctypes

        buf = (ctypes.c_byte * max(1, nbytes)).from_address(int(ptr))
        return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def device_alloc(self, nbytes: int) -> int:
        ptr = int(_check(self.rt.cudaMalloc(max(1, nbytes))))
        self._dev.append(ptr)
        return ptr

    def htod_async(self, dev_ptr: int, host: np.ndarray) -> None:
        _check(self.rt.cudaMemcpyAsync(dev_ptr, host.ctypes.data, host.nbytes,
                                       self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def dtoh_async(self, host: np.ndarray, dev_ptr: int) -> None:
        _check(self.rt.cudaMemcpyAsync(host.ctypes.data, dev_ptr, host.nbytes,
                                       self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        _check(self.rt.cudaStreamSynchronize(self.stream))

    def capture_graph(self, fn):
        """Record ``fn()`` (work enqueued on this stream) into a CUDA graph; returns a launchable exec."""
        rt = self.rt
        _check(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        try:
            fn()
        finally:
            graph = _check(rt.cudaStreamEndCapture(self.stream))
        return _check(rt.cudaGraphInstantiate(graph, 0))

    def launch_graph(self, graph_exec) -> None:
        _check(self.rt.cudaGraphLaunch(graph_exec, self.stream))

    def close(self) -> None:
        for p in self._dev:
            self.rt.cudaFree(p)
        for p in self._host:
            self.rt.cudaFreeHost(p)
        self._dev, self._host = [], []
        self.rt.cudaStreamDestroy(self.stream)


def open_cuda_mem(prefer: Optional[str] = None, device: int = 0) -> CudaMem:
    """pycuda when it imports (JetPack's usual stack), else cuda-python; a clear error when neither does."""
    order = [prefer] if prefer else ["pycuda", "cuda-python"]
    errors = []
    for name in order:
        try:
            return PycudaMem(device) if name == "pycuda" else CudaPythonMem(device)
        except Exception as e:  # ImportError, or a driver error without a GPU
            errors.append(f"{name}: {type(e).__name__}: {e}")
    raise DeviceError("no usable CUDA memory layer (" + "; ".join(errors) + ")")
