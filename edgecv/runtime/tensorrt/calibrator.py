"""IInt8EntropyCalibrator2 for the implicit-int8 path (TensorRT 8.5-10.x: JetPack 5/6, DLA).

Two uses: hand TensorRT the bundle's calibration cache (no batches: TensorRT reads the cache and skips
calibration), or calibrate on the device from preprocessed batches, copied to the GPU through the
runtime's CUDA memory layer, writing the cache TensorRT produces.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, List, Optional

import numpy as np

from edgecv.errors import DeviceError
from edgecv.runtime.tensorrt.compat import has_calibrators


def make_entropy_calibrator(trt, cache: Optional[bytes] = None, batches: Optional[Iterable[np.ndarray]] = None,
                            batch_size: int = 1, mem=None, cache_path: Optional[str] = None):
    """Build the calibrator. ``batches`` are float32 NCHW arrays of ``batch_size`` images each."""
    if not has_calibrators(trt):
        raise DeviceError(f"TensorRT {trt.__version__} has no IInt8EntropyCalibrator2 (removed in 11): "
                          "use the bundle's Q/DQ ONNX")

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.cache = cache
            self.cache_path = cache_path
            self._batches: Iterator[np.ndarray] = iter(batches or [])
            self.batch_size = batch_size
            self.served = 0
            self._dev: Optional[int] = None
            self._host = None

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names: List[str]):
            batch = next(self._batches, None)
            if batch is None:
                return None  # calibration data exhausted
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            if batch.shape[0] != self.batch_size:
                raise DeviceError(f"calibration batch {self.served} has {batch.shape[0]} images, expected {self.batch_size}")
            if mem is None:
                raise DeviceError("calibrating from batches needs a CUDA memory layer (mem=)")
            if self._dev is None:
                self._host = mem.pinned(batch.shape, np.float32)
                self._dev = mem.device_alloc(self._host.nbytes)
            self._host[...] = batch
            mem.htod_async(self._dev, self._host)
            mem.synchronize()
            self.served += 1
            return [self._dev]

        def read_calibration_cache(self):
            if self.cache is None and self.cache_path and os.path.exists(self.cache_path):
                with open(self.cache_path, "rb") as f:
                    self.cache = f.read()
            return self.cache

        def write_calibration_cache(self, data) -> None:
            self.cache = bytes(data)
            if self.cache_path:
                from edgecv.utils.io import atomic_write_bytes

                atomic_write_bytes(self.cache_path, self.cache)

    return EntropyCalibrator()
