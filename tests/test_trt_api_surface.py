"""The API-surface collector reads the code itself; a call removed in TensorRT 10 makes it fail."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import trt_api_surface as surf  # noqa: E402


def test_collects_names_from_source():
    names, removed = surf.collect(sorted(str(p) for p in (surf.ROOT / "edgecv").rglob("*.py")))
    for n in ["BuilderFlag.INT8", "MemoryPoolType.WORKSPACE", "IInt8EntropyCalibrator2", "IProfiler",
              "LayerInformationFormat.JSON", "TensorIOMode.INPUT", "OnnxParser", "Runtime"]:
        assert any(x == n or x.startswith(n + ".") for x in names), n
    assert removed == {}
    assert surf.main(["--module", "edgecv_no_such_trt"]) == 0  # nothing removed used; not importable: listed only


def test_removed_call_fails(tmp_path):
    bad = surf.ROOT / "edgecv" / "_tmp_removed_call.py"
    bad.write_text("def f(builder, network, config):\n    config.max_workspace_size = 1 << 30\n"
                   "    return builder.build_engine(network, config)\n")
    try:
        assert surf.main(["--module", "edgecv_no_such_trt"]) == 1
        _, removed = surf.collect([str(bad)])
        assert set(removed) == {"build_engine", "max_workspace_size"}
    finally:
        bad.unlink()
