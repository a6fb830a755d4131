"""The target registry: the one place that names deploy targets; adding one touches one module."""
import ast
import json
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FASHION, ROOT

from edgecv import targets


def test_no_backend_name_literal_outside_the_registry_and_backend_modules():
    allowed = {"edgecv/targets.py"} | {m.replace(".", "/") + ".py" for t in targets.all_targets() for m in t.modules}
    found = []
    for p in sorted((ROOT / "edgecv").rglob("*.py")):
        rel = str(p.relative_to(ROOT))
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in targets.names():
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert found == []


def test_registry_entries_are_complete():
    for t in targets.all_targets():
        cls = t.backend_class()
        assert cls.name == t.name and callable(cls.available) and callable(cls.for_bundle)
        for ref in (t.checker, t.version, *t.post_quantize):
            if ref:
                assert callable(targets.load(ref)), ref
    assert targets.host_reference().host_latency
    with pytest.raises(KeyError, match="unknown target 'coreml'"):
        targets.get("coreml")


DUMMY = textwrap.dedent('''
    """A third target in one module: ONNX Runtime with another quantization format, as a stand-in for any
    runtime. It registers itself when imported."""
    from edgecv import targets
    from edgecv.runtime.backends.ort import OrtBackend


    class DummyBackend(OrtBackend):
        name = "dummyrt"  # runs wherever ONNX Runtime does; priority -1 keeps auto from picking it


    targets.register(targets.Target(
        name="dummyrt", file_tag="dummy", backend="dummy_target:DummyBackend",
        quant={"activation": "int8", "ActivationSymmetric": True, "WeightSymmetric": True},
        host_latency=True, modules=("dummy_target",), priority=-1))
''')


@pytest.fixture
def dummy_target(tmp_path, monkeypatch):
    (tmp_path / "dummy_target.py").write_text(DUMMY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import dummy_target  # noqa: F401

    yield targets.get("dummyrt")
    targets.unregister("dummyrt")
    sys.modules.pop("dummy_target", None)


def test_a_third_target_touches_one_module(dummy_target, tiny_ckpt, tmp_path):
    from edgecv.cli import cli

    out = tmp_path / "bundle"
    r = CliRunner().invoke(cli, ["export", str(tiny_ckpt), "-o", str(out), "--calib", str(FASHION), "--eval",
                                 str(FASHION), "--target", "onnxruntime,dummyrt", "--calib-samples", "32",
                                 "--max-drop", "100", "--min-agreement", "0", "--json", "--corruptions", "none"])
    assert r.exit_code == 0, r.output[-2000:]
    m = json.loads(r.output.strip().splitlines()[-1])
    arts = {(a["target"], a["precision"]): a["file"] for a in m["artifacts"]}
    assert arts[("dummyrt", "int8")] == "model_int8_dummy.onnx" and (out / "model_int8_dummy.onnx").is_file()
    assert "dummyrt" in m["default"] and m["versions"]["dummyrt"] is None
    assert CliRunner().invoke(cli, ["check", str(out)]).exit_code == 0
    b = CliRunner().invoke(cli, ["bench", str(out), "--backend", "dummyrt", "--iters", "5", "--json"])
    assert b.exit_code == 0 and json.loads(b.output)["backend"] == "dummyrt", b.output
    e = CliRunner().invoke(cli, ["eval", str(out), "--backend", "dummyrt", "--data", str(FASHION), "--limit", "50",
                                 "--json"])
    assert e.exit_code == 0 and json.loads(e.output)["backend"] == "dummyrt"
    import onnx

    def input_zp(f):
        return next(i for i in onnx.load(str(out / f)).graph.initializer if i.name == "input_zero_point").data_type

    # its own quantizer settings: signed activations, where the onnxruntime target's are unsigned
    assert input_zp("model_int8_dummy.onnx") == onnx.TensorProto.INT8
    assert input_zp("model_int8_ort.onnx") == onnx.TensorProto.UINT8
    from edgecv.runtime.backends.select import resolve_target

    assert resolve_target("auto").name != "dummyrt"  # the lowest priority: auto prefers every other target
    assert np.isfinite(m["summary"]["baseline"]["latency_ms"])
