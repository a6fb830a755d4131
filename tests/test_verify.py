"""``edgecv verify`` end to end with ONNX Runtime: golden vectors in the bundle, every precision checked against
fp32, the fastest within budget chosen and recorded, and run/bench/eval using the choice."""
import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import FASHION, resign, unanswerable_golden
from onnx import numpy_helper

from edgecv.bundle.golden import load_golden, to_inputs, to_pixels
from edgecv.bundle.reader import open_bundle
from edgecv.runtime.backends.openvino import OpenVinoBackend


def cli():
    from edgecv.cli import cli as group

    return group


@pytest.fixture(autouse=True)
def choice_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECV_CACHE", str(tmp_path / "cache"))




def test_golden_vectors_are_in_the_bundle_and_reproduce_fp32(tiny_bundle):
    b = open_bundle(tiny_bundle)
    assert b.manifest["golden"]["n"] == 64 and "golden.npz" in b.manifest["files"]
    assert b.manifest["golden"]["budget"] == {"min_agreement": 0.0, "max_drop": 100.0}  # the tiny recipe's
    x, y, ref = load_golden(b)
    assert x.shape == (64, 1, 28, 28) and y.shape == (64,) and ref.shape == (64, 10)
    from edgecv.runtime.backends.ort import OrtBackend

    got = OrtBackend(str(tiny_bundle / "model_fp32.onnx")).infer(x)
    assert np.abs(got - ref).max() < 1e-4  # the stored logits are the fp32 model's on exactly these inputs
    assert np.array_equal(to_pixels(to_inputs(np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16),
                                              b.preprocess), b.preprocess).ravel(), np.arange(256))


def _damage_scales(path):
    """Each layer's weights read with their neighbour channel's scale: wrong answers on every runtime. (Scaling the
    activations' scales is not: the file's own arithmetic keeps 98% agreement, which OpenVINO computes, while ONNX
    Runtime's fused QLinearConv reads the int32 biases at the new scales and fails alone.)"""
    m = onnx.load(str(path))
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if init.name.endswith("_scale") and not init.name.endswith("quantized_scale") and a.size > 1:
            init.CopyFrom(numpy_helper.from_array(np.roll(a, 1), init.name))  # per-channel weight scales
    onnx.save(m, str(path))


def test_verify_chooses_records_and_refuses_a_damaged_int8(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    resign(bundle, lambda m: m["golden"]["budget"].update(min_agreement=0.9))  # within reach of the tiny model
    r = CliRunner().invoke(cli(), ["verify", str(bundle), "--json", "--iters", "20"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    ort = {c["precision"]: c for c in rep["candidates"] if c["target"] == "onnxruntime"}
    assert set(ort) == {"int8", "fp32"} and ort["fp32"]["agreement"] == 1.0 and ort["fp32"]["max_abs_err"] < 1e-4
    assert ort["int8"]["status"] == "passed" and ort["int8"]["agreement"] >= 0.9
    trt = [c for c in rep["candidates"] if c["target"] == "tensorrt"]
    assert trt and trt[0]["status"] == "unavailable" and trt[0]["reason"]
    chosen = rep["chosen"]
    passed = [c for c in rep["candidates"] if c["status"] == "passed"]
    assert {c["target"] for c in passed} >= {"onnxruntime"}  # and OpenVINO where installed: CPU runtimes race
    assert chosen["p50_ms"] == min(c["p50_ms"] for c in passed)  # the fastest within the budget, any target

    _damage_scales(bundle / "model_int8_ort.onnx")
    resign(bundle)
    r = CliRunner().invoke(cli(), ["verify", str(bundle), "--json", "--iters", "20"])
    rep = json.loads(r.output)
    bad = next(c for c in rep["candidates"] if c["target"] == "onnxruntime" and c["precision"] == "int8")
    assert bad["status"] == "failed" and bad["agreement"] < 0.9
    assert f"{bad['agreement']:.1%} < 90.0%" in bad["reason"]
    assert all(c["status"] == "failed" for c in rep["candidates"] if c.get("file") == "model_int8_ort.onnx")  # OpenVINO too
    # the fp32 file: as fp32, or as bf16 where this CPU has bf16 units and it was the faster (a race on this model)
    floats = {"fp32"} | ({"bf16"} if OpenVinoBackend.has_bf16() else set())
    chosen = rep["chosen"]["precision"]
    assert chosen in floats and rep["chosen"]["file"] == "model_fp32.onnx"

    # run, bench and eval now use the recorded choice by default
    b = json.loads(CliRunner().invoke(cli(), ["bench", str(bundle), "--iters", "5", "--json"]).output)
    assert b["precision"] == chosen and b["artifact"] == "model_fp32.onnx"
    e = json.loads(CliRunner().invoke(cli(), ["eval", str(bundle), "--data", str(FASHION), "--limit", "40",
                                              "--json"]).output)
    assert e["precision"] == chosen and e["chosen_by"] == "verify"
    import cv2

    from edgecv.data.fashion_mnist import load_fashion_mnist
    from edgecv.runtime.stream.loop import run

    (tmp_path / "imgs").mkdir()
    for i, img in enumerate(load_fashion_mnist(FASHION, "test")[0][:3]):
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.png"), img)
    s = run(str(bundle), str(tmp_path / "imgs"), "auto", emit=lambda _: None)
    assert s["frames"] == 3 and s["artifact"] == "model_fp32.onnx"
    # an explicit precision still wins
    b8 = json.loads(CliRunner().invoke(cli(), ["bench", str(bundle), "--precision", "int8", "--iters", "5",
                                               "--json"]).output)
    assert b8["precision"] == "int8"


def test_verify_exit_1_when_nothing_is_within_budget(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    unanswerable_golden(bundle)  # golden logits nothing agrees with, under the strictest valid budget
    r = CliRunner().invoke(cli(), ["verify", str(bundle)])
    assert r.exit_code == 1 and "no precision is within the fidelity budget" in r.output
    assert not (tmp_path / "cache" / "verified").exists()


def test_a_choice_is_per_bundle_content(tiny_bundle, tmp_path):
    """A recorded choice applies only to the exact bundle it was made for (by manifest hash)."""
    from edgecv.runtime.acceptance.verify import verify
    from edgecv.runtime.choice import recorded_choice

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    verify(str(bundle), iters=5)
    assert recorded_choice(open_bundle(bundle)) is not None
    resign(bundle, lambda m: m.update(note="changed"))
    assert recorded_choice(open_bundle(bundle)) is None


def test_old_bundle_without_golden_vectors_is_named(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "golden.npz").unlink()

    def drop(m):
        m.pop("golden")
        m["files"].pop("golden.npz")

    resign(bundle, drop)
    r = CliRunner().invoke(cli(), ["verify", str(bundle)])
    assert r.exit_code == 2 and "has no golden vectors" in r.output


def test_eval_against_fp32_reports_fidelity(tiny_bundle):
    from edgecv.data.fashion_mnist import load_fashion_mnist
    from edgecv.metrics import fidelity
    from edgecv.runtime.backends.ort import OrtBackend
    from edgecv.runtime.preprocess import Preprocessor

    r = CliRunner().invoke(cli(), ["eval", str(tiny_bundle), "--data", str(FASHION), "--limit", "300", "--backend",
                                   "onnxruntime", "--precision", "int8", "--against-fp32", "--include-seen", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    x, y = load_fashion_mnist(FASHION, "test")
    pre = Preprocessor(open_bundle(tiny_bundle).preprocess)
    from edgecv.utils.sampling import evenly_spaced

    pick = evenly_spaced(len(y), 300)  # the images --limit 300 judges (the tune images among them too: --include-seen)
    batch = np.stack([pre(x[i]) for i in pick])
    want = fidelity(OrtBackend(str(tiny_bundle / "model_fp32.onnx")).infer(batch),
                    OrtBackend(str(tiny_bundle / "model_int8_ort.onnx")).infer(batch), y[pick])
    assert res["precision"] == "int8" and res["agreement_with_fp32"] == pytest.approx(want["agreement"])
    assert res["mean_kl"] == pytest.approx(want["mean_kl"], rel=1e-3)
    assert res["worst_class_drop"] == pytest.approx(want["worst_class_drop"])
    labels = open_bundle(tiny_bundle).labels  # named, and only when a class lost top-1 (else any would read as one)
    assert res["worst_class"] == (labels[want["worst_class"]] if want["worst_class_drop"] > 0 else None)
    # streamed in batches, the images that changed class are the ones the whole-set metric counts
    assert [res[k] for k in ("changed", "changed_fp32_sure")] == [want["changed"], want["changed_fp32_sure"]]
    assert res["changed"] == round((1 - res["agreement_with_fp32"]) * 300)
    assert res["changed_fp32_median_prob"] == pytest.approx(want["changed_fp32_median_prob"])
    assert 0.8 < res["agreement_with_fp32"] <= 1.0 and res["mean_kl"] > 0


def test_a_cache_that_cannot_be_written_is_named_and_openvino_runs_without_it(tiny_bundle, tmp_path, monkeypatch,
                                                                              caplog):
    """EDGECV_CACHE pointing at a file (or a read-only home): verify was a bare errno after measuring everything,
    and every OpenVINO run failed to compile. verify is refused at once, naming the folder and the variable;
    OpenVINO, whose cache only saves compile time, runs without it."""
    import logging
    import time

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("EDGECV_CACHE", str(tmp_path / "file"))
    t0 = time.monotonic()
    r = CliRunner().invoke(cli(), ["verify", str(tiny_bundle)])
    assert r.exit_code == 2 and time.monotonic() - t0 < 5
    assert f"{tmp_path / 'file' / 'verified'}: cannot use this cache folder (Not a directory); set EDGECV_CACHE to " \
        "a writable folder" in r.output
    x, _, ref = load_golden(open_bundle(tiny_bundle))
    with caplog.at_level(logging.WARNING, logger="edgecv.runtime"):
        be = OpenVinoBackend(str(tiny_bundle / "model_fp32.onnx"))
        out = be.infer(x[:4])
    assert "OpenVINO compiles without its model cache" in caplog.text
    assert np.allclose(out[0] if isinstance(out, (list, tuple)) else out, ref[:4], atol=1e-3)


def test_golden_vectors_spread_over_a_class_ordered_split(tiny_bundle, tmp_path):
    """An image folder's evaluation split lists its images class by class; the first 64 (Caltech-101: about 8 of
    101 classes) were the device's acceptance test. They are spread over the split now."""
    from edgecv.data.fashion_mnist import load_fashion_mnist
    from edgecv.export.data import ArraySet
    from edgecv.export.evidence import write_golden_vectors
    from edgecv.recipe import ExportConfig

    x, y = load_fashion_mnist(FASHION, "test")
    order = np.argsort(y, kind="stable")[:: 10]  # 1,000 images, class by class
    pre = open_bundle(tiny_bundle).preprocess
    spec = {"input_size": pre.input_size, "channels": pre.channels, "mean": list(pre.mean), "std": list(pre.std)}
    xs = np.stack([(x[i][None].astype(np.float32) / 255 - spec["mean"][0]) / spec["std"][0] for i in order])
    ev = ArraySet(xs, y[order], [], "class-ordered")
    out = write_golden_vectors(tmp_path, tiny_bundle / "model_fp32.onnx", ev, spec, ExportConfig(golden=20))
    _, gy = np.load(tmp_path / out["file"])["pixels"], np.load(tmp_path / out["file"])["labels"]
    assert out["n"] == 20 and sorted(set(gy.tolist())) == list(range(10))
