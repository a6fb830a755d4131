"""The OpenVINO target, added through the registry: export judges it with OpenVINO itself, the CPU default is the
fastest CPU runtime's artefact, and bench/profile/run/eval/verify take ``--backend openvino``."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FASHION, resign

from edgecv import targets
from edgecv.bundle.reader import open_bundle

ov = pytest.importorskip("openvino", reason="the openvino extra is installed by .ci/run")


def cli():
    from edgecv.cli import cli as group

    return group


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECV_CACHE", str(tmp_path / "cache"))


def test_export_makes_and_judges_an_openvino_artefact(tiny_bundle):
    m = open_bundle(tiny_bundle).manifest
    arts = {(a["target"], a["precision"]): a for a in m["artifacts"]}
    ov8, ort8 = arts[("openvino", "int8")], arts[("onnxruntime", "int8")]
    # the same quantizer settings and no fallback: one file on disk, named by both targets
    assert ov8["file"] == ort8["file"] == "model_int8_ort.onnx" and "model_int8_ov.onnx" not in m["files"]
    assert m["versions"]["openvino"] == ov.__version__.split("-")[0]
    # judged by OpenVINO's own int8 arithmetic: its logits differ from ONNX Runtime's on the same file
    assert 0 < ov8["top1"] <= 1 and 0 <= ov8["mean_kl"] and ov8["latency_ms"] > 0
    cpu = m["cpu_default"]
    lat = {(a["target"], a["file"]): a["latency_ms"] for a in m["artifacts"]}
    best = min((t for t in ("onnxruntime", "openvino")), key=lambda t: lat[(t, m["default"][t]["file"])])
    assert cpu["target"] == best and cpu["file"] == m["default"][best]["file"]


def test_int8_kernels_run_and_shared_buffer_answers_like_a_copy(tiny_bundle):
    """OpenVINO runs the Q/DQ convolutions as int8 kernels (its performance counters say which kernel ran), and
    the in-place input buffer the camera loop refills gives the same logits as a fresh array."""
    from edgecv.runtime.backends.openvino import OpenVinoBackend

    be = OpenVinoBackend(str(tiny_bundle / "model_int8_ort.onnx"), threads=2)
    rng = np.random.default_rng(0)
    buf = be.input_buffer(4)
    outs = []
    for _ in range(3):
        x = rng.standard_normal(buf.shape).astype(np.float32)
        buf[:] = x
        got = be.infer(buf)  # the second and third calls read buf in place
        outs.append(got)
        assert np.array_equal(got, be.infer(x.copy()))
    assert not np.array_equal(outs[1], outs[2])  # refilled, not a stale binding
    prof = be.profile_layers(np.ascontiguousarray(x[:1]), 5)
    kinds = " ".join(prof["ops"].values())
    assert "Convolution" in kinds and "I8" in kinds, kinds
    assert all(len(v) == 5 for v in prof["layers"].values())
    assert len(prof["run_pairs"]) == 5 and all(s > 0 and r > 0 for s, r in prof["run_pairs"])


def test_cli_commands_take_backend_openvino(tiny_bundle, tmp_path):
    b = CliRunner().invoke(cli(), ["bench", str(tiny_bundle), "--backend", "openvino", "--precision", "int8",
                                   "--iters", "10", "--json"])
    assert b.exit_code == 0, b.output
    assert json.loads(b.output)["backend"] == "openvino"
    e = CliRunner().invoke(cli(), ["eval", str(tiny_bundle), "--backend", "openvino", "--data", str(FASHION),
                                   "--limit", "200", "--json"])
    assert e.exit_code == 0, e.output
    ev = json.loads(e.output)
    assert ev["backend"] == "openvino" and ev["n"] == 200 and 0.1 < ev["top1"] <= 1
    p = CliRunner().invoke(cli(), ["profile", str(tiny_bundle), "--backend", "openvino", "--iters", "10",
                                   "-o", str(tmp_path / "p")])
    assert p.exit_code == 0, p.output
    prof = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert prof[0] == {"count": 10} and len(prof) > 2
    v = CliRunner().invoke(cli(), ["verify", str(tiny_bundle), "--json", "--iters", "10"])
    assert v.exit_code == 0, v.output
    rows = {(r["target"], r["precision"]): r for r in json.loads(v.output)["candidates"]}
    assert rows[("openvino", "int8")]["status"] == "passed" and rows[("openvino", "fp32")]["agreement"] == 1.0


def test_auto_runs_the_cpu_default_target(bundle_copy):
    """Until verify has measured the device, ``--backend auto`` on a CPU opens the CPU default's target."""
    from edgecv.runtime.backends.select import open_backend

    for t in ("openvino", "onnxruntime"):
        resign(bundle_copy, lambda m, t=t: m.update(cpu_default={**m["default"][t], "target": t}))
        be, info = open_backend(str(bundle_copy))
        be.close()
        assert info["backend"] == t and info["chosen_by"] == "manifest default"


def test_without_openvino_the_export_says_so(tiny_ckpt, tmp_path, monkeypatch):
    """OpenVINO is an optional extra: missing, the default export skips its target and records why, and asking
    for it is a one-line error. (Its absence is simulated; the package is installed here.)"""
    from edgecv.runtime.backends.openvino import OpenVinoBackend

    monkeypatch.setattr(OpenVinoBackend, "available", classmethod(lambda cls: (False, "OpenVINO is not installed")))
    common = [str(tiny_ckpt), "--calib", str(FASHION), "--eval", str(FASHION), "--calib-samples", "32",
              "--max-drop", "100", "--min-agreement", "0", "--corruptions", "none"]
    r = CliRunner().invoke(cli(), ["export", *common, "-o", str(tmp_path / "a"), "--target", "openvino"])
    assert r.exit_code == 2 and "--target openvino: OpenVINO is not installed" in r.output, r.output
    assert not (tmp_path / "a").exists()
    r = CliRunner().invoke(cli(), ["export", *common, "-o", str(tmp_path / "b"), "--no-int8", "--json"])
    assert r.exit_code == 0, r.output[-2000:]
    m = json.loads(r.output.strip().splitlines()[-1])
    assert "openvino" not in {a["target"] for a in m["artifacts"]}
    assert m["summary"]["targets_skipped"] == {"openvino": "OpenVINO is not installed"}
    assert set(m["summary"]["options"]["targets"]) == set(targets.names()) - {"openvino"}


def test_a_bad_model_file_is_one_clear_error(tmp_path):
    from edgecv.errors import ModelFileError
    from edgecv.runtime.backends.openvino import OpenVinoBackend

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelFileError, match="bad.onnx: not a model OpenVINO can read"):
        OpenVinoBackend(str(bad))


def test_camera_loops_run_on_openvino(tiny_bundle, tmp_path):
    """``edgecv run --backend openvino``: one source, and two sources batched into one call per round; the
    labels equal ONNX Runtime's on the same int8 file wherever both are confident."""
    import cv2

    from edgecv.runtime.stream.loop import run

    vid = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"mp4v"), 30, (64, 48))
    for i in range(20):
        w.write(np.full((48, 64, 3), (i * 11) % 255, np.uint8))
    w.release()
    out = {}
    for backend in ("openvino", "onnxruntime"):
        lines = []
        s = run(str(tiny_bundle), str(vid), backend, as_json=True, emit=lines.append, precision="int8")
        assert s["frames"] == 20, s
        out[backend] = [json.loads(x) for x in lines]
    assert {r["label"] for r in out["openvino"]} and all(r["score"] > 0 for r in out["openvino"])
    both = [(a["label"], b["label"]) for a, b in zip(out["openvino"], out["onnxruntime"]) if min(a["score"], b["score"]) > 0.6]
    assert all(a == b for a, b in both)
    r = CliRunner().invoke(cli(), ["run", str(tiny_bundle), "--source", str(vid), "--source", str(vid),
                                   "--backend", "openvino", "--json"])
    assert r.exit_code == 0, r.output[-2000:]
    recs = [json.loads(x) for x in r.output.splitlines() if x.startswith("{") and '"camera"' in x]
    assert {x["camera"] for x in recs} == {"cam0", "cam1"} and len(recs) >= 20  # latest-frame: some may drop


def test_a_process_that_does_not_own_every_core_is_not_pinned(tiny_bundle, monkeypatch):
    """OpenVINO pins threads from core 0 up in every process, so one-thread processes (one per camera) would all
    share core 0 (tools/multicam_bench.py measures it). Below the usable core count edgecv turns pinning off;
    the compiled model reports what it got."""
    from edgecv.runtime.backends import openvino as ovb

    path = str(tiny_bundle / "model_int8_ort.onnx")
    x = np.zeros((1,) + tuple(ovb.OpenVinoBackend(path).inputs[0].shape[1:]), np.float32)
    monkeypatch.setattr(ovb, "usable_cores", lambda: 2)
    one = ovb.OpenVinoBackend(path, threads=1, cache=False)
    one.infer(x)
    assert one._requests[1].get_compiled_model().get_property("ENABLE_CPU_PINNING") is False
    both = ovb.OpenVinoBackend(path, threads=2, cache=False)
    both.infer(x)
    assert "ENABLE_CPU_PINNING" not in both._config  # the process owns the cores: OpenVINO's default stands
