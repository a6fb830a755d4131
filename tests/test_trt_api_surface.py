"""The API-surface collector reads the code itself; a call removed in TensorRT 10 makes it fail."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import trt_api_surface as surf  # noqa: E402


def test_collects_names_from_source():
    names, removed, guarded = surf.collect(sorted(str(p) for p in (surf.ROOT / "edgecv").rglob("*.py")))
    for n in ["BuilderFlag.INT8", "MemoryPoolType.WORKSPACE", "IInt8EntropyCalibrator2", "IProfiler",
              "LayerInformationFormat.JSON", "TensorIOMode.INPUT", "IExecutionContext.execute_async_v3",
              "IExecutionContext.set_tensor_address", "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name",
              "IBuilderConfig.set_memory_pool_limit", "Builder.build_serialized_network",
              "ICudaEngine.create_engine_inspector"]:
        assert any(x == n or x.startswith(n + ".") for x in names), n
    assert removed == {}
    # Version-dependent names are used only behind capability checks, so trt_compat can route around them.
    assert {"BuilderFlag.INT8", "BuilderFlag.FP16", "IInt8EntropyCalibrator2",
            "NetworkDefinitionCreationFlag.EXPLICIT_BATCH"} <= guarded
    assert "IExecutionContext.execute_async_v3" not in guarded
    assert surf.main(["--module", "edgecv_no_such_trt"]) == 0  # nothing removed used; not importable: listed only


def test_removed_call_fails(tmp_path):
    bad = surf.ROOT / "edgecv" / "_tmp_removed_call.py"
    bad.write_text("def f(builder, network, config):\n    config.max_workspace_size = 1 << 30\n"
                   "    return builder.build_engine(network, config)\n")
    try:
        assert surf.main(["--module", "edgecv_no_such_trt"]) == 1
        _, removed, _ = surf.collect([str(bad)])
        assert set(removed) == {"build_engine", "max_workspace_size"}
    finally:
        bad.unlink()


def test_unguarded_missing_name_fails(tmp_path):
    so = tmp_path / "fake_bindings.so"  # a library that lacks every name: unguarded names must fail
    so.write_bytes(b"\0nothing\0")
    assert surf.main(["--bindings-so", str(so), "--side", "runtime"]) == 1
