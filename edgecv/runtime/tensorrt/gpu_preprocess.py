"""GPU preprocessing where CUDA exists: resize, centre-crop, BGR->RGB, scale and normalise in one CUDA kernel that
writes straight into the engine's device input buffer, so the CPU's per-frame work is the decode and one
host-to-device copy of the decoded frame.

The kernel computes the training transform itself (torchvision's antialiased bilinear, i.e. PIL's triangle filter
of half-width = shrink factor, separable) for the crop window only, in float. The host precomputes, once per frame
size, each output row's and column's source window and normalised taps (:func:`axis_taps`, the same formula as the
CPU path's reference); the kernel sums taps over the window. So the GPU path is closer to training than the CPU
path's ``area``/``fast`` approximations, and :func:`reference` (numpy, the kernel's arithmetic) is what the GPU
check compares it with.

Compiled at run time with NVRTC (cuda-python), for the device's own compute capability, loaded into the current
context (the primary context the TensorRT backend shares) and launched on the backend's stream. No torch, no CuPy.
"""
from __future__ import annotations

import ctypes
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from edgecv.errors import DeviceError
from edgecv.runtime.tensorrt.cuda_mem import _check as _drv

KERNEL_NAME = "edgecv_preprocess"
KERNEL_SOURCE = r"""
extern "C" __global__ void edgecv_preprocess(
    const unsigned char* __restrict__ src, int src_h, int src_w, int src_pitch, int src_ch,
    const int* __restrict__ y_start, const float* __restrict__ y_w, int ky,
    const int* __restrict__ x_start, const float* __restrict__ x_w, int kx,
    float* __restrict__ dst, int crop, int out_ch,
    float a0, float a1, float a2, float b0, float b1, float b2)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= crop || y >= crop) return;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f;
    const int ys = y_start[y], xs = x_start[x];
    for (int j = 0; j < ky; ++j) {
        const float wy = y_w[y * ky + j];
        if (wy == 0.f) continue;
        const unsigned char* row = src + (size_t)min(ys + j, src_h - 1) * src_pitch;
        float r0 = 0.f, r1 = 0.f, r2 = 0.f;
        for (int i = 0; i < kx; ++i) {
            const float wx = x_w[x * kx + i];
            if (wx == 0.f) continue;
            const unsigned char* p = row + min(xs + i, src_w - 1) * src_ch;
            r0 += wx * p[0];
            if (src_ch >= 3) { r1 += wx * p[1]; r2 += wx * p[2]; }
        }
        s0 += wy * r0; s1 += wy * r1; s2 += wy * r2;
    }
    const size_t plane = (size_t)crop * crop;
    float* o = dst + (size_t)y * crop + x;
    if (out_ch == 1) {
        /* OpenCV's BGR2GRAY weights: a linear map, so resizing first changes nothing */
        const float g = src_ch >= 3 ? 0.114f * s0 + 0.587f * s1 + 0.299f * s2 : s0;
        o[0] = g * a0 + b0;
    } else if (src_ch == 1) {
        o[0] = s0 * a0 + b0; o[plane] = s0 * a1 + b1; o[2 * plane] = s0 * a2 + b2;
    } else {  /* BGR(A) frame -> RGB planes */
        o[0] = s2 * a0 + b0; o[plane] = s1 * a1 + b1; o[2 * plane] = s0 * a2 + b2;
    }
}
"""
BLOCK = (16, 16, 1)


def axis_taps(n_in: int, n_resized: int, offset: int, crop: int) -> Tuple[np.ndarray, np.ndarray]:
    """For crop positions ``offset .. offset+crop-1`` of an axis resized ``n_in -> n_resized``: the first source
    index of each window (int32, [crop]) and its normalised triangle taps (float32, [crop, K], zero-padded),
    cut from the CPU path's reference weights."""
    from edgecv.runtime.preprocess import _pil_triangle_weights

    full = _pil_triangle_weights(n_in, n_resized, n_in / n_resized)[offset: offset + crop]
    nz = full > 0
    starts = nz.argmax(1)
    k = int((n_in - 1 - nz[:, ::-1].argmax(1) - starts + 1).max())  # widest window, first to last nonzero tap
    cols = np.minimum(starts[:, None] + np.arange(k), n_in - 1)
    w = np.where(starts[:, None] + np.arange(k) < n_in, np.take_along_axis(full, cols, 1), 0.0)
    return starts.astype(np.int32), w.astype(np.float32)


def plan_for(pre, h: int, w: int) -> Dict[str, np.ndarray]:
    """The host tables for an h x w frame under a :class:`~edgecv.runtime.preprocess.Preprocessor`'s spec."""
    nh, nw = pre.resized_size(h, w)
    top = int(round((nh - pre.crop) / 2.0))
    left = int(round((nw - pre.crop) / 2.0))
    ys, yw = axis_taps(h, nh, top, pre.crop)
    xs, xw = axis_taps(w, nw, left, pre.crop)
    return {"y_start": ys, "y_w": yw, "x_start": xs, "x_w": xw}


def affine(pre) -> Tuple[Sequence[float], Sequence[float]]:
    """Per output channel (a, b) with value = pixel * a + b: scale, mean and std folded together."""
    scale = pre.spec.scale
    mean = np.asarray(pre.spec.mean, np.float64)
    std = np.asarray(pre.spec.std, np.float64)
    a = list(scale / std) + [0.0] * (3 - len(std))
    b = list(-mean / std) + [0.0] * (3 - len(std))
    return a, b


def reference(pre, frame: np.ndarray) -> np.ndarray:
    """The kernel's arithmetic in numpy (float32 [C, crop, crop]): what a GPU result is checked against."""
    h, w = frame.shape[:2]
    p = plan_for(pre, h, w)
    src = frame.reshape(h, w, -1).astype(np.float32)
    ky, kx = p["y_w"].shape[1], p["x_w"].shape[1]
    yi = np.minimum(p["y_start"][:, None] + np.arange(ky), h - 1)  # [crop, ky]
    xi = np.minimum(p["x_start"][:, None] + np.arange(kx), w - 1)
    rows = np.einsum("yk,ykxc->yxc", p["y_w"], src[yi])  # [crop, w, C]
    s = np.einsum("xk,yxkc->yxc", p["x_w"], rows[:, xi])  # [crop, crop, C]
    a, b = affine(pre)
    if pre.channels == 1:
        g = s[..., 0] if s.shape[2] == 1 else 0.114 * s[..., 0] + 0.587 * s[..., 1] + 0.299 * s[..., 2]
        return (g * a[0] + b[0])[None].astype(np.float32)
    planes = [s[..., 0]] * 3 if s.shape[2] == 1 else [s[..., 2], s[..., 1], s[..., 0]]
    return np.stack([planes[c] * a[c] + b[c] for c in range(3)]).astype(np.float32)


def compile_ptx(arch: str, source: str = KERNEL_SOURCE, name: str = KERNEL_NAME) -> bytes:
    """PTX of ``source`` (default: the preprocessing kernel) for ``arch`` (e.g. ``compute_87``, Orin) from NVRTC;
    a clear error with NVRTC's log on failure."""
    from cuda.bindings import nvrtc

    def ok(res, what):
        err, *rest = res
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise DeviceError(f"NVRTC {what} failed: {err}")
        return rest[0] if rest else None

    prog = ok(nvrtc.nvrtcCreateProgram(source.encode(), f"{name}.cu".encode(), 0, [], []), "create")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++11"]
        err, = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            size = ok(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
            log = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, log)
            raise DeviceError(f"NVRTC could not compile {name} for {arch}: "
                              f"{log.decode(errors='replace').strip()[:500]}")
        size = ok(nvrtc.nvrtcGetPTXSize(prog), "PTX size")
        ptx = b" " * size
        ok(nvrtc.nvrtcGetPTX(prog, ptx), "PTX")
        return ptx
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def load_kernel(source: str = KERNEL_SOURCE, name: str = KERNEL_NAME) -> Tuple[object, object, str]:
    """Compile ``source`` for the current context's device and load it: (module, function, arch).
    Call with the context current; unload the module (``cuModuleUnload``) before the context goes."""
    from cuda.bindings import driver

    dev = _drv(driver.cuCtxGetDevice(), "cuCtxGetDevice")
    major = _drv(driver.cuDeviceGetAttribute(
        driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "attribute")
    minor = _drv(driver.cuDeviceGetAttribute(
        driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "attribute")
    arch = f"compute_{major}{minor}"
    ptx = ctypes.create_string_buffer(compile_ptx(arch, source, name))  # NUL-terminated, alive for the call
    module = _drv(driver.cuModuleLoadData(ctypes.addressof(ptx)), "cuModuleLoadData")
    return module, _drv(driver.cuModuleGetFunction(module, name.encode()), "cuModuleGetFunction"), arch


class GpuPreprocessor:
    """Decoded frames (uint8 HxW[xC], host) -> normalised float32 NCHW rows of a device buffer.

    ``mem`` is the backend's :class:`~edgecv.runtime.tensorrt.cuda_mem.CudaMem` (its stream and device allocations);
    call with its context current (``mem.activate()``). The kernel is launched asynchronously on ``mem``'s stream,
    so the engine call enqueued after it on the same stream reads the finished input.
    """

    def __init__(self, pre, mem, dst_ptr: int, max_batch: int):
        from cuda.bindings import driver

        self.pre, self.mem, self.dst, self.max_batch = pre, mem, int(dst_ptr), int(max_batch)
        self._drv = driver
        self.module, self.kernel, self.arch = load_kernel()
        self.a, self.b = affine(pre)
        self._plans: Dict[Tuple[int, int], Dict] = {}
        self._staging: Dict[int, Tuple[int, int]] = {}  # batch row -> (device frame buffer, its size)
        self.row_bytes = pre.channels * pre.crop * pre.crop * 4

    def _plan(self, h: int, w: int) -> Dict:
        key = (h, w)
        if key not in self._plans:
            host = plan_for(self.pre, h, w)
            dev = {}
            for k, arr in host.items():
                dev[k] = self.mem.device_alloc(arr.nbytes)
                self.mem.htod_async(dev[k], arr)
            self.mem.synchronize()  # the host tables are temporaries
            dev["ky"], dev["kx"] = host["y_w"].shape[1], host["x_w"].shape[1]
            self._plans[key] = dev
        return self._plans[key]

    def __call__(self, frame: np.ndarray, row: int = 0) -> None:
        """Enqueue frame -> batch row ``row`` of the device input buffer."""
        if not 0 <= row < self.max_batch:
            raise DeviceError(f"batch row {row} is outside the engine's max batch {self.max_batch}")
        frame = np.ascontiguousarray(frame)
        if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)):
            raise ValueError(f"expected a decoded uint8 frame (HxW or HxWx1/3/4), got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        ch = 1 if frame.ndim == 2 else frame.shape[2]
        plan = self._plan(h, w)
        buf, size = self._staging.get(row, (0, 0))
        if size < frame.nbytes:  # grows to the largest frame seen; the old buffer stays with mem until close
            buf, size = self.mem.device_alloc(frame.nbytes), frame.nbytes
            self._staging[row] = (buf, size)
        self.mem.htod_async(buf, frame)
        c = self.pre.crop
        args = ((buf, h, w, w * ch, ch, plan["y_start"], plan["y_w"], plan["ky"], plan["x_start"], plan["x_w"],
                 plan["kx"], self.dst + row * self.row_bytes, c, self.pre.channels, *self.a, *self.b),
                (ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                 ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                 ctypes.c_int, ctypes.c_int) + (ctypes.c_float,) * 6)
        grid = ((c + BLOCK[0] - 1) // BLOCK[0], (c + BLOCK[1] - 1) // BLOCK[1], 1)
        _drv(self._drv.cuLaunchKernel(self.kernel, *grid, *BLOCK, 0, self._drv.CUstream(self.mem.stream_handle),
                                      args, 0), "cuLaunchKernel")

    def close(self) -> None:
        if getattr(self, "module", None) is not None:
            self._drv.cuModuleUnload(self.module)
            self.module = None


def gpu_preprocess_available() -> Tuple[bool, Optional[str]]:
    """Whether cuda-python's NVRTC and driver bindings import (a GPU is still needed to run the kernel)."""
    try:
        from cuda.bindings import driver, nvrtc  # noqa: F401
    except ImportError as e:
        return False, f"cuda-python is not installed ({e}); pip install 'edgecv[cuda]'"
    return True, None
