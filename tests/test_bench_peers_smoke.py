"""tools/bench_peers.py --smoke: a few iterations so the benchmark cannot rot (numbers are not asserted)."""
import json
import subprocess
import sys

from conftest import ROOT


def test_bench_peers_smoke(tmp_path):
    r = subprocess.run([sys.executable, "tools/bench_peers.py", "--smoke", "--out", str(tmp_path),
                        "--fashion-bundle", str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((tmp_path / "peers.json").read_text())
    backends = {row["backend"] for row in data["rows"] if row["model"] == "mobilenet_v2"}
    assert {"pytorch eager fp32", "onnxruntime fp32"} <= backends
    assert any(b.startswith("edgecv default") for b in backends)
    assert data["meta"]["cpu"]["cores"] >= 1 and "foreign_cpu_cores" in data["meta"]
    assert (tmp_path / "peers.png").stat().st_size > 5000 and "| model | backend |" in (tmp_path / "peers.md").read_text()
