"""GPU checks for a lent GPU machine (no TensorRT there): edgecv's CUDA memory/stream layer and a PyTorch
CUDA latency reference. Run through tools/gpu_check.sh; prints one JSON object per check."""
import json
import sys
import time

import cv2
import numpy as np


def check_cuda_mem():
    from edgecv.runtime.tensorrt.cuda_mem import open_cuda_mem

    out = {}
    for prefer in ("pycuda", "cuda-python"):
        try:
            mem = open_cuda_mem(prefer)
        except Exception as e:
            out[prefer] = {"available": False, "error": str(e)[:200]}
            continue
        rng = np.random.default_rng(0)
        res = {"available": True}
        for dtype in (np.float32, np.float16, np.int8, np.uint8):
            src = mem.pinned((4, 3, 224, 224), dtype)
            src[...] = rng.integers(-100, 100, src.shape).astype(dtype)
            dst = mem.pinned(src.shape, dtype)
            dev = mem.device_alloc(src.nbytes)
            mem.htod_async(dev, src)
            mem.dtoh_async(dst, dev)
            mem.synchronize()
            res[f"roundtrip_{np.dtype(dtype).name}"] = bool(np.array_equal(src, dst))
        # Stream ordering: 50 back-to-back copies A->dev, dev->B with A changing each time; the stream must
        # serialise them, so B ends equal to the last A.
        a = mem.pinned((1 << 20,), np.float32)
        b = mem.pinned((1 << 20,), np.float32)
        dev = mem.device_alloc(a.nbytes)
        ok = True
        for i in range(50):
            a[...] = i
            mem.htod_async(dev, a)
            mem.dtoh_async(b, dev)
            mem.synchronize()
            ok &= bool((b == i).all())
        res["stream_ordering"] = ok
        t0 = time.perf_counter()
        for _ in range(20):
            mem.htod_async(dev, a)
        mem.synchronize()
        res["htod_GBps"] = round(20 * a.nbytes / (time.perf_counter() - t0) / 1e9, 2)
        if hasattr(mem, "capture_graph"):
            a[...] = 7
            g = mem.capture_graph(lambda mem=mem, dev=dev, a=a, b=b: (mem.htod_async(dev, a), mem.dtoh_async(b, dev)))
            a[...] = 9
            mem.launch_graph(g)
            mem.synchronize()
            res["cuda_graph_replay"] = bool((b == 9).all())
        mem.close()
        out[prefer] = res
    return out


def check_preprocess_gpu():
    """edgecv's GPU preprocessing kernel (NVRTC, cuda-python) against its numpy reference and the CPU path, on
    frames of several sizes and layouts, written into a device buffer as the TensorRT backend's input."""
    from edgecv.runtime.preprocess import Preprocessor
    from edgecv.runtime.tensorrt.cuda_mem import open_cuda_mem
    from edgecv.runtime.tensorrt.gpu_preprocess import GpuPreprocessor, reference

    mem = open_cuda_mem("cuda-python")
    out = {}
    rng = np.random.default_rng(0)
    for channels in (3, 1):
        spec = {"input_size": 224, "resize": 256, "crop": 224, "channels": channels, "scale": 1 / 255,
                "mean": [0.485, 0.456, 0.406][:channels], "std": [0.229, 0.224, 0.225][:channels]}
        pre = Preprocessor(spec)
        host = mem.pinned((2, channels, 224, 224), np.float32)
        dev = mem.device_alloc(host.nbytes)
        with mem.activate():
            gp = GpuPreprocessor(pre, mem, dev, 2)
        for shape in ((480, 640, 3), (1080, 1920, 3), (200, 300, 3), (640, 480, 4), (480, 640)):
            frame = cv2.GaussianBlur(rng.integers(0, 256, shape, np.uint8), (0, 0), 2)  # photo-like smoothness
            with mem.activate():
                gp(frame, row=1)
                mem.dtoh_async(host, dev)
                mem.synchronize()
            ref = reference(pre, frame)
            cpu = pre(frame)
            a = (1 / 255) / np.asarray(spec["std"])[:, None, None]  # normalised units -> grey levels
            out[f"c{channels}_{'x'.join(map(str, shape))}"] = {
                "arch": gp.arch, "max_abs_vs_reference": float(np.abs(host[1] - ref).max()),
                "mean_grey_levels_vs_cpu_path": float((np.abs(host[1] - cpu) / a).mean())}
        gp.close()
    mem.close()
    return out


def torch_latency():
    import torch

    from edgecv.models import create_model

    res = {"device": torch.cuda.get_device_name(0)}
    for name, kw, shape in [("efficientnet_lite0", {}, (1, 3, 224, 224)), ("resnet18", {}, (1, 3, 224, 224)),
                            ("mobilenet_v2", {}, (1, 3, 224, 224)), ("fashion_cnn", {}, (1, 1, 28, 28))]:
        try:
            m = create_model(name, **kw).eval().cuda()
        except ImportError as e:  # a model family's package missing on the lent machine
            res[f"{name}_skipped"] = str(e)[:120]
            continue
        for dt in (torch.float32, torch.float16):
            mm = m.to(dt)
            x = torch.randn(*shape, device="cuda", dtype=dt)
            with torch.no_grad():
                for _ in range(20):
                    mm(x)
                torch.cuda.synchronize()
                times = []
                for _ in range(200):
                    t0 = time.perf_counter()
                    mm(x)
                    torch.cuda.synchronize()
                    times.append((time.perf_counter() - t0) * 1e3)
            res[f"{name}_{str(dt).split('.')[-1]}_p50_ms"] = round(float(np.median(times)), 3)
    return res


if __name__ == "__main__":
    ok = True
    for name, fn in [("cuda_mem", check_cuda_mem), ("preprocess_gpu", check_preprocess_gpu), ("torch_cuda_latency", torch_latency)]:
        try:
            r = fn()
        except Exception as e:
            r, ok = {"error": f"{type(e).__name__}: {e}"}, False
        print(json.dumps({name: r}), flush=True)
    sys.exit(0 if ok else 1)
