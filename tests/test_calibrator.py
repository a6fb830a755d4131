"""edgecv's IInt8EntropyCalibrator2 subclass, driven through its Python methods without a GPU.

With full TensorRT bindings (tensorrt 8.6.0 needs Python 3.10: see README) the real base class is used;
the CUDA memory layer is a fake (named so) because no GPU exists here. Without full bindings a stand-in
base class with the same constructor contract is used, so the calibrator's own logic is still exercised.
"""
import importlib
import os
import types

import numpy as np
import pytest

from edgecv.runtime.tensorrt.calibrator import make_entropy_calibrator


def _trt():
    mod = os.environ.get("EDGECV_TRT_FULL_MODULE", "tensorrt")
    try:
        trt = importlib.import_module(mod)
        if hasattr(trt, "IInt8EntropyCalibrator2"):
            return trt, True
    except Exception:
        pass

    class Base:  # stand-in: the real binding is absent on this Python
        def __init__(self):
            pass

    return types.SimpleNamespace(IInt8EntropyCalibrator2=Base, __version__="stand-in"), False


class FakeGpuMem:
    """Records host->device copies; a fake because this machine has no GPU."""

    def __init__(self):
        self.copies, self.allocs = [], 0

    def pinned(self, shape, dtype):
        return np.empty(shape, dtype)

    def device_alloc(self, nbytes):
        self.allocs += 1
        return 0x7000_0000 + self.allocs

    def htod_async(self, dev, host):
        self.copies.append((dev, host.copy()))

    def synchronize(self):
        pass


def test_fake_gpu_calibrator_serves_batches_in_order_and_round_trips_cache(tmp_path):
    trt, real = _trt()
    batches = [np.full((2, 3, 8, 8), i, np.float32) for i in range(3)]
    mem = FakeGpuMem()
    cache_file = tmp_path / "calib.cache"
    cal = make_entropy_calibrator(trt, batches=batches, batch_size=2, mem=mem, cache_path=str(cache_file))
    if real:
        assert isinstance(cal, trt.IInt8EntropyCalibrator2)
    assert cal.get_batch_size() == 2
    ptrs = [cal.get_batch(["input"]) for _ in range(3)]
    assert cal.get_batch(["input"]) is None  # exhausted
    assert len({p[0] for p in ptrs}) == 1 and mem.allocs == 1  # one device buffer, reused
    assert [int(h[0, 0, 0, 0]) for _, h in mem.copies] == [0, 1, 2]
    assert cal.read_calibration_cache() is None  # no cache yet: TensorRT would calibrate
    data = b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n"
    cal.write_calibration_cache(data)
    assert cache_file.read_bytes() == data
    again = make_entropy_calibrator(trt, cache_path=str(cache_file))
    assert again.read_calibration_cache() == data  # byte-identical
    assert again.get_batch(["input"]) is None


def test_calibrator_refused_on_tensorrt_11():
    from edgecv.errors import DeviceError

    trt11 = types.SimpleNamespace(__version__="11.4.0")  # no IInt8EntropyCalibrator2, as in TensorRT 11
    with pytest.raises(DeviceError, match="removed in 11"):
        make_entropy_calibrator(trt11, cache=b"x")
