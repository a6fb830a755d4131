"""bf16 as a precision of its own on CPUs with bf16 units (AMX or AVX-512 BF16): the fp32 model run by OpenVINO at
bf16 inference precision, measured by the export and by ``edgecv verify``, chosen only when within the budget and
faster; an fp32 request still answers as fp32. What runs for real depends on this CPU: where it has no bf16
units, the tests check that bf16 is neither offered nor accepted."""
import shutil

import numpy as np
import pytest

from edgecv.errors import DeviceError
from edgecv.runtime.acceptance.verify import choose, verify
from edgecv.runtime.backends.select import open_backend

ov = pytest.importorskip("openvino")
from edgecv.runtime.backends.openvino import OpenVinoBackend  # noqa: E402

HAS_BF16 = OpenVinoBackend.has_bf16()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECV_CACHE", str(tmp_path / "cache"))


def row(target, precision, p50, passed=True):
    return {"target": target, "precision": precision, "p50_ms": p50, "status": "passed" if passed else "failed",
            "reason": "" if passed else "agreement 90.0% < 99.0%"}


def test_bf16_is_chosen_when_within_budget_and_fastest():
    rows = [row("openvino", "int8", 2.0, passed=False), row("openvino", "bf16", 1.5), row("openvino", "fp32", 3.0),
            row("onnxruntime", "fp32", 3.2)]
    chosen = choose(rows)
    assert chosen["precision"] == "bf16" and chosen["reason"] == "chosen: the fastest within the budget"
    assert rows[2]["reason"] == "within budget, slower (3.000 ms vs 1.500 ms)"


def test_bf16_is_refused_outside_the_budget_and_not_chosen_when_slower():
    outside = [row("openvino", "bf16", 1.0, passed=False), row("openvino", "fp32", 3.0), row("onnxruntime", "int8", 2.5)]
    assert choose(outside)["precision"] == "int8"
    assert outside[0]["status"] == "failed" and "agreement" in outside[0]["reason"]
    slower = [row("openvino", "bf16", 2.8), row("onnxruntime", "int8", 2.5)]
    assert choose(slower)["precision"] == "int8" and "slower (2.800 ms vs 2.500 ms)" in slower[0]["reason"]


def test_verify_measures_bf16_where_the_cpu_has_it(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    rep = verify(str(bundle), iters=10, record=False)
    bf16 = [c for c in rep["candidates"] if c["precision"] == "bf16"]
    if not HAS_BF16:
        assert not bf16  # nothing emulated: no bf16 row at all
        return
    assert len(bf16) == 1 and bf16[0]["target"] == "openvino" and bf16[0]["file"] == "model_fp32.onnx"
    assert bf16[0]["status"] in ("passed", "failed") and 0.0 <= bf16[0]["agreement"] <= 1.0
    assert bf16[0]["max_abs_err"] > 0  # measured, and not the fp32 run: bf16 rounds the logits
    passed = [c for c in rep["candidates"] if c["status"] == "passed"]
    assert rep["chosen"]["p50_ms"] == min(c["p50_ms"] for c in passed)


def test_an_fp32_request_answers_as_fp32_and_bf16_as_bf16(tiny_bundle):
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    ref = open_backend(str(tiny_bundle), "onnxruntime", "fp32")[0].infer(x)
    be, info = open_backend(str(tiny_bundle), "openvino", "fp32")
    assert info["precision"] == "fp32" and np.abs(be.infer(x) - ref).max() < 1e-4
    if not HAS_BF16:
        with pytest.raises(DeviceError, match="bf16: this CPU has no bf16 units"):
            open_backend(str(tiny_bundle), "openvino", "bf16")
        return
    be16, info16 = open_backend(str(tiny_bundle), "openvino", "bf16")
    got = be16.infer(x)
    assert info16["precision"] == "bf16" and info16["file"] == "model_fp32.onnx"
    assert np.abs(got - ref).max() > 1e-4  # bf16 arithmetic, visibly
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()  # and still the same model


def test_the_export_records_its_bf16_decision(tiny_bundle):
    from edgecv.bundle.reader import open_bundle

    m = open_bundle(tiny_bundle).manifest
    arts = {(a["target"], a["precision"]) for a in m["artifacts"]}
    if not HAS_BF16:
        assert ("openvino", "bf16") not in arts and "bf16" not in m["summary"]
        return
    reason = m["summary"]["bf16"]["openvino"]
    assert ("openvino", "bf16") in arts if reason.startswith("within the budget") else "outside the budget" in reason
