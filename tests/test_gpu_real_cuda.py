"""TrtBackend on a real GPU with a stand-in for the TensorRT engine (TensorRT is on no machine this project can
reach; the lent GPU machines have CUDA, cuda-python and NVRTC but not TensorRT).

Everything except the engine is real: cuda-python memory and stream, page-locked staging, CUDA-graph capture of the
enqueue, and the NVRTC preprocessing kernel writing the device input. The stand-in execution context launches a real
CUDA kernel (per-channel mean of the input) on the stream TrtBackend passes to ``execute_async_v3``, so the tests
check what an engine would see: which bytes are in the device input when it runs, and that its output comes back
in stream order (tests/gpu_standin.py). Skipped where there is no CUDA device (the development machine and CI).
"""
import numpy as np
import pytest
from gpu_standin import IMAGENET_SPEC as SPEC
from gpu_standin import cuda_device_present, photo_like, standin_backend

from edgecv.runtime.preprocess import Preprocessor

pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-python provides NVRTC and the driver API")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_device_present(),
                                                  reason="needs a CUDA device (none on the development machine)")]

@pytest.fixture(params=[False, True], ids=["plain", "cuda_graph"])
def gpu_backend(request):
    """TrtBackend's own buffer set-up on real CUDA memory, with a CUDA kernel in place of an engine."""
    be = standin_backend((3, 224, 224), (3,), max_batch=4, cuda_graph=request.param)
    yield be
    be.close()


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
    from edgecv.runtime.tensorrt.gpu_preprocess import reference

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
