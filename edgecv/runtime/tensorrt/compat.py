"""The one place that knows TensorRT versions (8.5 through 11).

Only calls that exist from 8.5 on are used: ``build_serialized_network``, ``set_memory_pool_limit``,
``num_io_tensors``/``get_tensor_name``/``set_tensor_address``/``execute_async_v3``,
``create_engine_inspector``. What changed between versions is routed here:

* 8.5-10.x: precision builder flags (FP16/INT8) and the IInt8EntropyCalibrator2 path exist.
* 10.1+ deprecates and 11 removes the flags and calibrators: explicit Q/DQ networks are built
  strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``), precision comes from the graph.
* 8.x needs ``EXPLICIT_BATCH`` when creating a network; 10+ makes it the only mode (flag deprecated).
* The lean runtime package (``tensorrt_lean``) carries the runtime API only (no builder).
"""
from __future__ import annotations

import importlib
import os
from typing import Optional, Tuple

from edgecv.utils.versions import version_tuple as parse_version

_TRT = None
_TRIED = False


def import_tensorrt():
    """``tensorrt`` (full) or ``tensorrt_lean`` (runtime only), or None. Set EDGECV_TRT_MODULE to choose."""
    global _TRT, _TRIED
    if _TRIED:
        return _TRT
    _TRIED = True
    names = [os.environ["EDGECV_TRT_MODULE"]] if os.environ.get("EDGECV_TRT_MODULE") else ["tensorrt", "tensorrt_lean"]
    for name in names:
        try:
            _TRT = importlib.import_module(name)
            break
        except Exception:  # ImportError, or OSError from missing shared libraries
            continue
    return _TRT


def trt_version() -> Optional[str]:
    """The installed TensorRT's version, or None (for the manifest)."""
    trt = import_tensorrt()
    return getattr(trt, "__version__", None) if trt else None


# The TensorRT versions edgecv runs on (the bundle's ``compat.tensorrt_major`` is written from these).
TRT_MIN = (8, 5)
TRT_MAX_MAJOR = 11


def version_tuple(trt=None) -> Tuple[int, int, int]:
    trt = trt or import_tensorrt()
    return parse_version(getattr(trt, "__version__", "0.0.0"))


def supported(version: str) -> bool:
    """Whether edgecv runs on this TensorRT version (8.5 through 11.x)."""
    v = parse_version(version)
    return TRT_MIN <= v[:2] and v[0] <= TRT_MAX_MAJOR


def has_builder(trt=None) -> bool:
    trt = trt or import_tensorrt()
    return trt is not None and hasattr(trt, "Builder")


def has_precision_flags(trt=None) -> bool:
    """FP16/INT8 builder flags: present up to 10.x, removed in 11."""
    trt = trt or import_tensorrt()
    return trt is not None and hasattr(trt, "BuilderFlag") and hasattr(trt.BuilderFlag, "INT8")


def has_calibrators(trt=None) -> bool:
    trt = trt or import_tensorrt()
    return trt is not None and hasattr(trt, "IInt8EntropyCalibrator2")


def import_cudart():
    """cuda-python's runtime module (new or old layout), or None."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    return cudart


def cuda_device_count() -> int:
    """Number of CUDA devices, without creating a context (cuda-python, then pycuda); 0 when unknown."""
    cudart = import_cudart()
    if cudart is not None:
        try:
            err, n = cudart.cudaGetDeviceCount()
            return int(n) if int(err) == 0 else 0
        except Exception:
            return 0
    try:
        import pycuda.driver as cuda

        cuda.init()
        return cuda.Device.count()
    except Exception:
        return 0


def trt_available() -> Tuple[bool, str]:
    """(True, "") when TensorRT imports and a GPU exists; else (False, what is missing)."""
    trt = import_tensorrt()
    if trt is None:
        return False, "TensorRT is not installed (pip install 'edgecv[tensorrt]' or JetPack's python3-libnvinfer)"
    if cuda_device_count() < 1:
        return False, f"TensorRT {trt.__version__} is installed but no CUDA GPU is visible"
    return True, ""


def explicit_batch_flags(trt, strongly_typed: bool = False) -> int:
    flags = 0
    if version_tuple(trt) < (10, 0, 0) and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def device_key() -> Optional[dict]:
    """GPU name and compute capability of device 0 (None without a GPU)."""
    cudart = import_cudart()
    if cudart is not None:
        try:
            err, prop = cudart.cudaGetDeviceProperties(0)
            if int(err) == 0:
                name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
                return {"gpu": name.strip("\x00 "), "compute_capability": f"{prop.major}.{prop.minor}"}
        except Exception:
            pass
    try:
        import pycuda.driver as cuda

        cuda.init()
        d = cuda.Device(0)
        cc = d.compute_capability()
        return {"gpu": d.name(), "compute_capability": f"{cc[0]}.{cc[1]}"}
    except Exception:
        return None
