"""The TensorRT path's defects (issue 12), tested where no GPU exists: build requests, cache keys, profiles,
batching and flags. Fakes are only the GPU and its name (said in the test names); everything else is real."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FASHION, ROOT

from edgecv.bundle.reader import open_bundle
from edgecv.cli import cli
from edgecv.errors import DeviceError
from edgecv.runtime.tensorrt.engine_build import EngineKey, build_request, engine_key_for, lookup, profile_shapes, store, timing_cache_path

FAKE_GPU = {"gpu": "fake-Orin", "compute_capability": "8.7"}


def test_cli_group_has_every_command_without_side_imports():
    code = "from edgecv.cli import cli; print(sorted(cli.commands))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == ["bench", "build", "check", "eval", "explain", "export", "install",
                                                 "profile", "publish", "push", "repo", "rollback", "run", "service-unit",
                                                 "sign", "status", "train", "update", "verify"]


def test_fake_gpu_fp16_batch_workspace_and_opt_level_are_in_the_key(tiny_bundle, tmp_path):
    b = open_bundle(tiny_bundle)
    base = engine_key_for(b, "model_fp32.onnx", "fp32", device=FAKE_GPU, trt_version="10.3.0")
    store(tmp_path, base, b"PLAN", {})
    assert lookup(tmp_path, base)[0] is not None
    for change in ({"fp16": True}, {"max_batch": 16}, {"workspace_mb": 2048}, {"opt_level": 5}):
        k = engine_key_for(b, "model_fp32.onnx", "fp32", device=FAKE_GPU, trt_version="10.3.0",
                           **{"fp16": False, "max_batch": 8, "workspace_mb": 1024, "opt_level": -1, **change})
        assert k.slot() != base.slot(), change  # its own slot: an fp16 plan is never returned for fp32
        assert lookup(tmp_path, k) == (None, "no cached engine")


def test_timing_cache_is_one_per_trt_version_and_gpu(tmp_path):
    a = EngineKey("a" * 64, "10.3.0", "fake-Orin", "8.7", "fp32")
    b = EngineKey("b" * 64, "10.3.0", "fake-Orin", "8.7", "int8-qdq")
    c = EngineKey("a" * 64, "8.6.2", "fake-Xavier", "7.2", "fp32")
    assert timing_cache_path(tmp_path, a) == timing_cache_path(tmp_path, b) == tmp_path / "timing-trt10.3.0-sm87.cache"
    assert timing_cache_path(tmp_path, c) != timing_cache_path(tmp_path, a)


def test_dla_profiles_are_static_and_fp32_on_dla_is_refused(tiny_bundle):
    assert profile_shapes((-1, 3, 224, 224), 8) == ((1, 3, 224, 224), (1, 3, 224, 224), (8, 3, 224, 224))
    assert profile_shapes((-1, 3, 224, 224), 1, dla_core=0) == ((1, 3, 224, 224),) * 3
    b = open_bundle(tiny_bundle)
    assert build_request(b, "int8", dla_core=0)[1:] == ("int8-calib", False, 1)  # calibration cache, static batch 1
    assert build_request(b, "fp16", dla_core=1)[1:] == ("fp16", True, 1)
    with pytest.raises(DeviceError, match="DLA runs fp16 or int8 only"):
        build_request(b, "fp32", dla_core=0)


def test_export_fp16_and_max_batch_reach_the_device_build(tiny_bundle, tmp_path):
    b = open_bundle(tiny_bundle)
    assert b.manifest["build"] == {"fp16": False, "max_batch": 8}
    assert build_request(b, "int8") == ("model_int8_trt.onnx", "int8-qdq", False, 8)
    b.manifest["build"] = {"fp16": True, "max_batch": 4}  # what `export --fp16 --max-batch 4` records
    assert build_request(b, "int8") == ("model_int8_trt.onnx", "int8-qdq", True, 4)
    assert build_request(b, "int8", fp16=False, max_batch=2)[2:] == (False, 2)  # flags on the device win


def test_export_records_fp16_and_max_batch(tiny_ckpt, tmp_path):
    r = CliRunner().invoke(cli, ["export", str(tiny_ckpt), "-o", str(tmp_path / "b"), "--calib", str(FASHION),
                                 "--eval", str(FASHION), "--calib-samples", "16", "--max-drop", "100", "--min-agreement", "0",
                                 "--fp16", "--max-batch", "4", "--target", "tensorrt", "--json", "--corruptions", "none"])
    assert r.exit_code == 0, r.output[-1500:]
    m = open_bundle(tmp_path / "b").manifest
    assert m["build"] == {"fp16": True, "max_batch": 4}


def test_eval_batches_up_to_the_backends_max_batch(tiny_bundle, tmp_path, monkeypatch):
    """A stand-in for an engine built for batch 8 (``batch 32 > the engine's max batch 8`` before)."""
    from edgecv import targets

    mod = tmp_path / "max8_target.py"
    mod.write_text(textwrap.dedent('''
        from edgecv import targets
        from edgecv.errors import DeviceError
        from edgecv.runtime.backends.ort import OrtBackend

        class Max8(OrtBackend):
            name = "onnxruntime"  # runs the bundle's ORT artefact
            max_batch = 8
            seen = []

            def infer(self, batch):
                Max8.seen.append(len(batch))
                if len(batch) > self.max_batch:
                    raise DeviceError(f"batch {len(batch)} > the engine's max batch {self.max_batch}")
                return super().infer(batch)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    import max8_target

    t = targets.get("onnxruntime")
    monkeypatch.setitem(targets._REGISTRY, "onnxruntime", targets.Target(**{**t.__dict__, "backend": "max8_target:Max8"}))
    from edgecv.evaluate.bundle import eval_bundle

    res = eval_bundle(str(tiny_bundle), str(FASHION), backend="onnxruntime", limit=50, show_progress=False)
    assert res["n"] == 50 and max(max8_target.Max8.seen) == 8


def test_dla_on_a_cpu_target_is_a_clear_error(tiny_bundle):
    for cmd in (["bench", str(tiny_bundle), "--backend", "onnxruntime", "--dla", "0"],
                ["eval", str(tiny_bundle), "--backend", "onnxruntime", "--dla", "0", "--data", str(FASHION)]):
        r = CliRunner().invoke(cli, cmd)
        assert r.exit_code == 2 and "DLA cores run TensorRT engines" in r.output, r.output


def test_profile_median_is_a_real_median(tiny_bundle):
    from edgecv.runtime.acceptance.profile import profile, trtexec_json

    res = profile(str(tiny_bundle), "onnxruntime", iters=30, warmup=3)
    rows = trtexec_json(res)[1:]
    assert rows and any(abs(r["medianMs"] - r["averageMs"]) > 1e-9 for r in rows)
    assert all(r["medianMs"] > 0 for r in rows)


def test_ort_uses_gpu_providers_when_present(monkeypatch):
    import onnxruntime as ort

    from edgecv.runtime.backends.ort import default_providers

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert default_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_missing_opencv_is_one_line(tiny_bundle):
    """The base install has no OpenCV wheel (it would shadow JetPack's GStreamer build): say what to install."""
    code = textwrap.dedent('''
        import builtins, sys
        real = builtins.__import__
        def guard(name, *a, **k):
            if name == "cv2" or name.startswith("cv2."):
                raise ModuleNotFoundError("No module named 'cv2'", name="cv2")
            return real(name, *a, **k)
        builtins.__import__ = guard
        from edgecv.cli import main
        sys.argv = ["edgecv"] + sys.argv[1:]
        main()
    ''')
    r = subprocess.run([sys.executable, "-c", code, "run", str(tiny_bundle), "--source", "x"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "python3-opencv" in r.stderr and "Traceback" not in r.stderr
    deps = (ROOT / "pyproject.toml").read_text().split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "opencv" not in deps


def test_run_takes_an_options_dataclass(tiny_bundle, tmp_path):
    import cv2

    from edgecv.data.fashion_mnist import load_fashion_mnist
    from edgecv.runtime.stream.loop import run
    from edgecv.runtime.stream.options import RunOptions

    for i, img in enumerate(load_fashion_mnist(FASHION, "test")[0][:4]):
        cv2.imwrite(str(tmp_path / f"{i}.png"), img)
    lines = []
    s = run(str(tiny_bundle), str(tmp_path), "onnxruntime", RunOptions(topk=2, as_json=True), emit=lines.append)
    assert s["frames"] == 4 and len(json.loads(lines[0])["topk"]) == 2
    with pytest.raises(TypeError):
        run(str(tiny_bundle), str(tmp_path), "onnxruntime", RunOptions(), nonsense=1)
    assert np.isfinite(s["fps"])


def test_auto_falls_back_when_the_preferred_engine_fails(tiny_bundle, tmp_path, monkeypatch):
    """A stand-in for TensorRT whose engine build fails on this device: auto falls back to a CPU runtime and
    says why (before, the TensorRT failure ended the run)."""
    from edgecv import targets
    from edgecv.runtime.backends.select import open_backend

    mod = tmp_path / "broken_gpu_target.py"
    mod.write_text(textwrap.dedent('''
        from edgecv.errors import DeviceError
        from edgecv.runtime.backends.ort import OrtBackend

        class BrokenGpu(OrtBackend):
            name = "tensorrt"

            @classmethod
            def available(cls):
                return True, ""

            @classmethod
            def for_bundle(cls, bundle, precision=None, threads=None, **kw):
                raise DeviceError("fake GPU: engine build failed (out of memory)")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    t = targets.get("tensorrt")
    monkeypatch.setitem(targets._REGISTRY, "tensorrt",
                        targets.Target(**{**t.__dict__, "backend": "broken_gpu_target:BrokenGpu"}))
    be, info = open_backend(str(tiny_bundle), "auto")
    be.close()
    # the next target in line is a CPU runtime (ONNX Runtime, or OpenVINO where it won the speed gate)
    assert info["backend"] in ("onnxruntime", "openvino") and "engine build failed" in info["fallback"][0]
    with pytest.raises(DeviceError, match="engine build failed"):
        open_backend(str(tiny_bundle), "tensorrt")  # asked for by name: no silent substitute


def test_fused_tensorrt_layer_names_map_to_their_first_module():
    from edgecv.runtime.acceptance.profile import torch_module_of

    assert torch_module_of("/features/features.0/features.0.0/Conv + /features/features.0/features.0.2/Relu") \
        == "features.0.0"
    assert torch_module_of("PWN(/_blocks.0/_swish/Sigmoid, /_blocks.0/_swish/Mul)") == "_blocks.0._swish"
    assert torch_module_of("Reformatting CopyNode for Input Tensor 0 to /_conv_stem/Conv") == "_conv_stem"


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "mobilenet_v2", "mobilenet_v3_small"])
def test_every_weighted_node_of_an_export_maps_to_its_module(tmp_path, name):
    """Nested Sequentials inside attributes (MobileNet's ``conv``, ResNet's ``downsample``) repeat their own name in
    the scope: ``/features/features.1/conv/conv.0/conv.0.0/Conv`` is ``features.1.conv.0.0``."""
    import onnx

    from edgecv.compress.qat import weighted_layers
    from edgecv.export.onnx_export import export_onnx
    from edgecv.models import create_model
    from edgecv.runtime.acceptance.profile import torch_module_of

    model = create_model(name).eval()
    export_onnx(model, tmp_path / "m.onnx", (3, 64, 64))
    nodes = [n.name for n in onnx.load(str(tmp_path / "m.onnx")).graph.node if n.op_type in ("Conv", "Gemm")]
    assert sorted(torch_module_of(n) for n in nodes) == sorted(weighted_layers(model))
