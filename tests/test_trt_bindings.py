"""Checks against real TensorRT bindings (no GPU): the lean runtimes 10.16 and 11.4 by import, and the full
bindings libraries 10.3 and 11.4 by the names compiled into them. .ci/run installs them under
$EDGECV_TRT_DIR (default /tmp/edgecv-trt); without them these tests are skipped (say so: run .ci/run)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRT_DIR = Path(os.environ.get("EDGECV_TRT_DIR", "/tmp/edgecv-trt"))
LEAN = {"10.16": TRT_DIR / "lean10", "11.4": TRT_DIR / "lean11"}
BINDINGS = {"10.3": TRT_DIR / "bind10" / "tensorrt_bindings" / "tensorrt.so",
            "11.4": TRT_DIR / "bind11" / "tensorrt_bindings" / "tensorrt.so"}


def _py(code, site, *args):
    env = dict(os.environ, PYTHONPATH=f"{site}:{ROOT}", EDGECV_TRT_MODULE="tensorrt_lean")
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("version", sorted(LEAN))
def test_runtime_api_surface_on_lean(version):
    if not LEAN[version].is_dir():
        pytest.skip(f"{LEAN[version]} missing (installed by .ci/run)")
    r = _py(None, LEAN[version], "tools/trt_api_surface.py", "--module", "tensorrt_lean", "--side", "runtime")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"vs {version}" in r.stdout and "missing: none" in r.stdout


@pytest.mark.parametrize("version", sorted(BINDINGS))
def test_builder_api_surface_in_bindings_library(version):
    if not BINDINGS[version].is_file():
        pytest.skip(f"{BINDINGS[version]} missing (installed by .ci/run)")
    r = subprocess.run([sys.executable, "tools/trt_api_surface.py", "--bindings-so", str(BINDINGS[version]),
                        "--side", "builder"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    if version.startswith("11"):  # TensorRT 11 removed these; edgecv only uses them behind checks
        assert "IInt8EntropyCalibrator2" in r.stdout.split("routed around by trt_compat:")[1].splitlines()[0]


PROFILER = """
import tensorrt_lean as trt
from edgecv.runtime.tensorrt.compat import import_tensorrt, has_builder, has_calibrators, has_precision_flags
from edgecv.runtime.tensorrt.backend import make_layer_profiler
t = import_tensorrt()
assert t is trt and not has_builder(t)
p = make_layer_profiler(t)
assert isinstance(p, trt.IProfiler)
for name, ms in [("conv1", 0.5), ("relu1", 0.1), ("conv1", 0.25)]:
    p.report_layer_time(name, ms)
assert p.totals() == {"conv1": 0.75, "relu1": 0.1} and p.order == ["conv1", "relu1"], p.totals()
print(t.__version__, has_precision_flags(t), has_calibrators(t))
"""


@pytest.mark.parametrize("version", sorted(LEAN))
def test_profiler_subclass_on_real_bindings(version):
    """Constructs edgecv's IProfiler subclass from the real bindings and drives it (no GPU: no engine)."""
    if not LEAN[version].is_dir():
        pytest.skip(f"{LEAN[version]} missing (installed by .ci/run)")
    r = _py(PROFILER, LEAN[version])
    assert r.returncode == 0, r.stderr[-2000:]
    got_version, flags, calibrators = r.stdout.split()
    assert got_version.startswith(version)
    assert flags == ("True" if version.startswith("10") else "False")  # 11 removed the INT8/FP16 builder flags
    assert calibrators == "False"  # the lean runtime carries no calibrators in either version
