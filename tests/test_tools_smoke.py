"""tools/loop_overhead.py and tools/soak.py on the tiny bundle: a few frames so the tools cannot rot (their
measurements are not asserted: ratios and memory growth are numbers for the closing note, not for CI)."""
import json
import subprocess
import sys

from conftest import ROOT


def test_loop_overhead_smoke(tiny_bundle):
    r = subprocess.run([sys.executable, "tools/loop_overhead.py", str(tiny_bundle), "--frames", "30", "--rounds", "2",
                        "--size", "64x48,40x30", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout)
    assert [row["frame_size"] for row in rows] == ["64x48", "40x30"]
    for row in rows:
        assert len(row["loop_rounds_ms"]) == 2 and len(row["bare_rounds_ms"]) == 3
        st = row["stages_mean_ms"]
        parts = st["preprocess"] + st["infer"] + st["postprocess"]
        assert abs(parts - st["pre_infer_post"]) < 1e-6 * max(1.0, parts)
        assert abs(row["ratio"] - row["loop_pre_infer_post_mean_ms"] / row["bare_run_mean_ms"]) < 1e-9


def test_soak_smoke(tiny_bundle):
    r = subprocess.run([sys.executable, "tools/soak.py", str(tiny_bundle), "--frames", "600"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["frames"] == 600 and out["error"] is None
    assert out["growth_mb"] == out["rss_after_mb"] - out["rss_before_mb"]
