"""GPU preprocessing: the CUDA kernel compiles with NVRTC (here, without a GPU), and its arithmetic (the numpy
reference the GPU check compares against) is torchvision's evaluation transform. Running the kernel needs a CUDA
device: that test runs where one exists (and tools/gpu_check.py runs it on a lent GPU machine)."""
import cv2
import numpy as np
import pytest
from gpu_standin import IMAGENET_SPEC, cuda_device_present, photo_like

from edgecv.errors import DeviceError
from edgecv.runtime.preprocess import Preprocessor
from edgecv.runtime.tensorrt.gpu_preprocess import axis_taps, compile_ptx, plan_for, reference

nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-python (installed with torch) provides NVRTC")

SPEC = IMAGENET_SPEC


def grey_levels(a, b, spec=SPEC):
    """Mean |a - b| of two normalised tensors, in 0..255 grey levels."""
    per = (spec["scale"] / np.asarray(spec["std"]))[:, None, None]
    return float((np.abs(a - b) / per).mean())


@pytest.mark.parametrize("arch", ["compute_87", "compute_75", "compute_86", "compute_90"])
def test_kernel_compiles_with_nvrtc(arch):
    """Orin (sm_87) and the dGPU generations this NVRTC supports; Xavier/Nano compile with JetPack's own NVRTC."""
    supported = nvrtc.nvrtcGetSupportedArchs()[1]
    if int(arch.split("_")[1]) not in supported:
        pytest.skip(f"this NVRTC does not target {arch}")
    ptx = compile_ptx(arch).decode()
    assert ".entry edgecv_preprocess" in ptx
    assert f".target sm_{arch.split('_')[1]}" in ptx


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(DeviceError, match="compute_10"):
        compile_ptx("compute_10")


@pytest.mark.parametrize("n_in,n_out,crop", [(480, 256, 224), (1920, 455, 224), (200, 256, 224), (256, 256, 224)])
def test_axis_taps_are_normalised_windows_inside_the_frame(n_in, n_out, crop):
    starts, w = axis_taps(n_in, n_out, (n_out - crop) // 2, crop)
    assert starts.shape == (crop,) and w.shape[0] == crop
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
    assert starts.min() >= 0 and (starts + (w > 0).sum(1)).max() <= n_in
    # the kernel's loop length: about two source pixels per unit of shrink (PIL's triangle support)
    assert w.shape[1] <= 2 * max(n_in / n_out, 1.0) + 2


@pytest.mark.parametrize("shape", [(480, 640, 3), (1080, 1920, 3), (200, 300, 3), (640, 480, 3), (480, 640, 4)])
def test_reference_is_torchvisions_eval_transform(shape):
    """Resize(256, antialias) + CenterCrop(224) + normalise, on the RGB planes of a BGR(A) frame."""
    torch = pytest.importorskip("torch")
    from torchvision.transforms import v2 as T

    frame = photo_like(shape)
    rgb = torch.from_numpy(np.ascontiguousarray(frame[:, :, 2::-1])).permute(2, 0, 1).float()
    tv = T.CenterCrop(224)(T.Resize(256, antialias=True)(rgb)) / 255.0
    tv = ((tv - torch.tensor(SPEC["mean"])[:, None, None]) / torch.tensor(SPEC["std"])[:, None, None]).numpy()
    ref = reference(Preprocessor(SPEC), frame)
    assert ref.shape == (3, 224, 224) and ref.dtype == np.float32
    assert grey_levels(ref, tv) < 0.05  # the same filter in float: differences are rounding only


def test_reference_close_to_the_cpu_path_and_gray_models():
    frame = photo_like((480, 640, 3), seed=1)
    pre = Preprocessor(SPEC)
    assert grey_levels(reference(pre, frame), pre(frame)) < 1.0  # the CPU path's approximation: ~0.7 grey levels
    gspec = dict(SPEC, channels=1, mean=[0.5], std=[0.25])
    gpre = Preprocessor(gspec)
    for f in (frame, cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)):
        out = reference(gpre, f)
        assert out.shape == (1, 224, 224)
        assert grey_levels(out, gpre(f), gspec) < 1.0


def test_plan_follows_the_preprocessors_crop_rule():
    pre = Preprocessor(SPEC)
    p = plan_for(pre, 480, 640)  # resized to 256 x 341: crop rows from 16, columns from 58
    assert p["y_start"].shape == (224,) and p["x_start"].shape == (224,)
    assert abs(p["y_start"][0] - 16 * 480 / 256) <= 2 * 480 / 256
    assert abs(p["x_start"][0] - 58 * 640 / 341) <= 2 * 640 / 341


@pytest.mark.skipif(not cuda_device_present(), reason="needs a CUDA device (none on the development machine)")
def test_kernel_on_gpu_matches_reference():
    from edgecv.runtime.tensorrt.cuda_mem import open_cuda_mem
    from edgecv.runtime.tensorrt.gpu_preprocess import GpuPreprocessor

    mem = open_cuda_mem("cuda-python")
    pre = Preprocessor(SPEC)
    host = mem.pinned((2, 3, 224, 224), np.float32)
    dev = mem.device_alloc(host.nbytes)
    gp = GpuPreprocessor(pre, mem, dev, 2)
    for shape in ((480, 640, 3), (1080, 1920, 3), (200, 300, 3), (480, 640, 4)):
        frame = photo_like(shape)
        gp(frame, row=1)
        mem.dtoh_async(host, dev)
        mem.synchronize()
        np.testing.assert_allclose(host[1], reference(pre, frame), atol=1e-3)
    with pytest.raises(DeviceError, match="max batch"):
        gp(frame, row=2)
    gp.close()
    mem.close()
