"""tools/bench_peers.py --smoke: a few iterations so the benchmark cannot rot (numbers are not asserted)."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow  # a benchmark tool, not the product: python3 -m pytest -m slow (docs/benchmarks.md)
def test_bench_peers_smoke(tmp_path):
    r = subprocess.run([sys.executable, "tools/bench_peers.py", "--smoke", "--out", str(tmp_path),
                        ], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((tmp_path / "peers.json").read_text())
    backends = {row["backend"] for row in data["rows"] if row["model"] == "mobilenet_v2"}
    assert {"pytorch eager fp32", "onnxruntime fp32"} <= backends
    assert any(b.startswith("edgecv default") for b in backends)
    assert data["meta"]["cpu"]["cores"] >= 1 and "foreign_cpu_cores" in data["meta"]
    assert (tmp_path / "peers.png").stat().st_size > 5000 and "| model | weights | backend |" in (tmp_path / "peers.md").read_text()


def test_random_models_get_trained_like_batchnorm():
    """A random-weight model's folded biases must not all be zero (OpenVINO drops zero biases, a graph no trained
    model has): after ``trained_like_batchnorm`` the running statistics are those of the images fed through."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "tools"))
    from bench_peers import trained_like_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    bn0, bn1 = model[1], model[4]
    folded = lambda bn: bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)  # noqa: E731
    assert torch.all(folded(bn0) == 0)  # PyTorch's initial statistics: every folded bias exactly zero
    x = (np.random.default_rng(0).standard_normal((40, 3, 12, 12)) + 0.5).astype(np.float32)
    trained_like_batchnorm(model, x)
    assert not model.training and bn0.momentum == 0.1 and int(bn0.num_batches_tracked) == 2  # 32 + 8 images
    with torch.no_grad():
        conv_out = model[0](torch.from_numpy(x))
    # the cumulative average of the two batches' means (32 and 8 images), as training mode records it
    expect = (conv_out[:32].mean((0, 2, 3)) + conv_out[32:].mean((0, 2, 3))) / 2
    assert torch.allclose(bn0.running_mean, expect, atol=1e-5)
    assert torch.all(folded(bn0).abs() > 0) and torch.all(folded(bn1).abs() > 0)
    assert not torch.allclose(bn0.weight, torch.ones(8)) and not torch.allclose(bn0.bias, torch.zeros(8))
