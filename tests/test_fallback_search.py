"""The per-layer fallback's search: the fewest most-sensitive layers in float within budget, found in a handful of
quantize-and-measure trials instead of one per layer, and an unreachable budget refused after a single trial.

The model is a 12-layer CNN trained for seconds on Fashion-MNIST (its int8 form disagrees with fp32 often enough to
need several float layers), judged on real Fashion-MNIST test images.
"""
import importlib.util
import math

import numpy as np
import pytest
import torch
from conftest import FASHION
from torch import nn

from edgecv import targets
from edgecv.export.gates import AccuracyGate, TuneSplit, onnx_logits, sensitivity
from edgecv.export.onnx_export import export_onnx
from edgecv.export.quantize import calibrate, quantize
from edgecv.metrics import Budget, agreement, error_scale_needed


class DeepNet(nn.Module):
    def __init__(self, depth: int = 12, width: int = 12):
        super().__init__()
        layers = []
        for i in range(depth):
            layers += [nn.Conv2d(1 if i == 0 else width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def _trained(norm) -> nn.Module:
    from edgecv.data.fashion_mnist import load_fashion_mnist

    torch.manual_seed(0)
    x, y = load_fashion_mnist(FASHION, "train")
    x, y = torch.from_numpy(norm(x[:3000])), torch.from_numpy(y[:3000].astype(np.int64))
    net = DeepNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for i in range(0, len(x), 50):
        loss = nn.functional.cross_entropy(net(x[i: i + 50]), y[i: i + 50])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from edgecv.data.fashion_mnist import load_fashion_mnist

    def norm(a):
        return ((a[:, None].astype(np.float32) / 255 - 0.286) / 0.353).astype(np.float32)

    d = tmp_path_factory.mktemp("fallback_search")
    fp32 = d / "fp32.onnx"
    export_onnx(_trained(norm), fp32, (1, 28, 28))
    x, y = load_fashion_mnist(FASHION, "test")
    x = norm(x[:1064])
    cal, tx, ty = x[:64], x[64:], y[64:1064].astype(np.int64)
    # two over-bright calibration images stretch every minmax range: coarse int8 steps that each float layer removes
    stretched = np.concatenate([cal, cal[:2] * 30])
    calib = calibrate(fp32, stretched, "minmax", bias_correction=False)
    ref = onnx_logits(fp32, tx)
    tune = TuneSplit(tx, ty, float((ref.argmax(1) == ty).mean()), ref, cal[:32])
    tgt = targets.get("onnxruntime")
    ranked = [r["node"] for r in sensitivity(str(fp32), calib, tgt, tune.sens_x, d, show_progress=False)]
    sweep = []  # agreement with the k most sensitive layers in float, one count at a time (the old linear search)
    for k in range(len(ranked) + 1):
        quantize(fp32, calib, d / "k.onnx", tgt, exclude=ranked[:k])
        sweep.append(agreement(ref, onnx_logits(d / "k.onnx", tx, target=tgt)))
    return d, fp32, calib, tune, tgt, ranked, sweep


def _gate(setup, min_agreement, frac=1.0):
    d, _, _, tune, *_ = setup
    return AccuracyGate(tune, Budget(100.0, min_agreement), d, show_progress=False, max_fallback_frac=frac)


@pytest.mark.parametrize("budget", ["middle", "hardest"])
def test_search_finds_a_count_whose_one_fewer_missed_in_few_trials(setup, budget):
    d, fp32, calib, tune, tgt, ranked, sweep = setup
    assert sweep[0] < 0.97 and sweep[-1] > sweep[0] + 0.02, f"the net must need float layers: {sweep}"
    # a floor no count below the middle meets (the sweep need not rise steadily: how much each float layer buys
    # varies with the CPU the net trained on), or the best agreement short of every layer in float
    floor = max(sweep[: len(ranked) // 2]) + 5e-4 if budget == "middle" else max(sweep[:-1])
    first = next(k for k, a in enumerate(sweep) if a >= floor)
    assert first >= 2, f"too easy a budget to exercise the search: {sweep}"
    res = _gate(setup, floor).run(str(fp32), calib, tgt, d / "out.onnx")
    k = len(res.fallback)
    assert res.passed and [f["node"] for f in res.fallback] == ranked[:k]
    tried = {t["layers"]: t for t in res.search}
    assert tried[k]["within_budget"] and not tried[k - 1]["within_budget"]  # one fewer was measured and missed
    assert k >= first  # never fewer than the linear search (which stops at the first count within budget)
    assert len(tried) - 1 <= 1 + 2 * math.ceil(math.log2(len(ranked)))  # PTQ, the reach check, gallop, bisect
    if first >= 8:
        assert len(tried) - 1 < first  # fewer trials than the linear search's one per layer
    # the file left on disk is the chosen count's, whatever count was tried last
    assert agreement(tune.ref_logits, onnx_logits(d / "out.onnx", tune.x, target=tgt)) == pytest.approx(
        tried[k]["agreement"]) == pytest.approx(sweep[k])
    assert all(t["latency_ms"] > 0 for t in res.search[1:])


def test_unreachable_budget_is_refused_after_one_trial(setup):
    d, fp32, calib, tune, tgt, ranked, sweep = setup
    limit = len(ranked) // 2
    if sweep[limit] >= 1.0:
        pytest.skip("half the layers in float already agree on every image")
    res = _gate(setup, sweep[limit] + 1e-4, frac=limit / len(ranked) + 1e-9).run(str(fp32), calib, tgt,
                                                                                 d / "out2.onnx")
    assert not res.passed and [t["layers"] for t in res.search] == [0, limit]
    assert f"even with {limit} layers in float" in res.reason and len(res.fallback) == limit
    need = res.search[-1]["error_scale_needed"]
    assert 0 < need < 1 and f"cut to {need:.2f}x" in res.reason
    changes = res.search[-1]["changes"]  # the images that changed class, counted as agreement counts them
    assert changes["changed"] == round((1 - res.search[-1]["agreement"]) * len(tune)) > 0
    assert f"of the {len(tune)} tune images, {changes['changed']} changed class, {changes['changed_fp32_sure']} of them" \
        in res.reason


def test_class_changes_tell_a_tipped_near_tie_from_an_overturned_sure_answer():
    from edgecv.metrics import SURE, changed_confidences, class_changes, describe_changes, fidelity

    ref = np.array([[4.0, 0, 0], [1.0, 0.9, 0], [0, 0, 3], [0.2, 0.3, 0.25], [0, 6, 0]])
    q = np.array([[0.0, 4, 0], [0.9, 1.0, 0], [0, 0, 3], [0.3, 0.2, 0.25], [0, 6, 0]])
    probs = changed_confidences(ref, q)  # rows 0, 1 and 3 changed class, in row order
    e = np.exp(ref[[0, 1, 3]])
    assert probs == pytest.approx(e.max(1) / e.sum(1))  # fp32's own top-1 probability: 0.96, 0.43, 0.35
    c = class_changes(probs)
    assert c == {"changed": 3, "changed_fp32_sure": 1, "changed_fp32_median_prob": pytest.approx(np.median(probs))}
    assert (probs >= SURE).sum() == 1 and probs[0] >= SURE > probs[1]
    assert describe_changes(c) == ("3 changed class, 1 of them where fp32 was >= 50% sure (median fp32 top-1 "
                                   f"probability {np.median(probs):.2f})")
    f = fidelity(ref, q, np.array([0, 0, 2, 1, 1]))
    assert f["changed"] == round((1 - f["agreement"]) * len(ref)) == 3 and f["changed_fp32_sure"] == 1
    same = fidelity(ref, ref, np.array([0, 0, 2, 1, 1]))
    assert (same["changed"], same["changed_fp32_sure"], same["changed_fp32_median_prob"]) == (0, 0, None)
    assert describe_changes(class_changes(changed_confidences(ref, ref))) == "none changed class"
    # large logits stay finite (the softmax is taken from each row's maximum)
    assert changed_confidences(np.array([[1000.0, 0]]), np.array([[0.0, 1]])) == pytest.approx([1.0])


def test_error_scale_needed_is_the_largest_share_of_the_error_that_keeps_the_floor():
    from edgecv.metrics import error_scale_needed

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2000, 10))
    err = rng.normal(scale=0.5, size=ref.shape)
    s = error_scale_needed(ref, ref + err, 0.99)
    assert 0 < s < 1
    assert agreement(ref, ref + s * err) >= 0.99 > agreement(ref, ref + (s + 0.01) * err)
    assert error_scale_needed(ref, ref + 1e-9 * err, 0.99) == 1.0  # already within: nothing to cut
    # twice the error needs half the share
    assert error_scale_needed(ref, ref + 2 * err, 0.99) == pytest.approx(s / 2, rel=0.01)


def test_report_shows_the_search(setup, tmp_path):
    from edgecv.export.bundle_writer import write_report

    d, fp32, calib, tune, tgt, ranked, sweep = setup
    res = _gate(setup, sweep[len(ranked) // 2]).run(str(fp32), calib, tgt, d / "out3.onnx")
    art = {"file": "model_int8_ort.onnx", "target": "onnxruntime", "precision": "int8", "top1": 0.5,
           "latency_ms": 0.1, "fallback_layers": res.fallback, "fallback_search": res.search}
    summary = {"source": "s", "evaluation": {"images": 10, "source": "e"}, "calibration": {"images": 64},
               "stages": [], "baseline": {"top1": 0.5, "latency_ms": 0.1},
               "default": {"onnxruntime": {"file": art["file"], "reason": "r"}},
               "engine": {"built": False, "reason": "no TensorRT", "how": "edgecv build"}}
    write_report(tmp_path, summary, [art])
    text = (tmp_path / "report.md").read_text()
    assert ranked[0] in text and "| layers in float | top-1 | agreement |" in text
    assert text.count(" | True |") >= 1 and text.count(" | False |") >= 1


class PoolOnly(nn.Module):
    """No Conv, Gemm or MatMul: nothing the fallback could keep in float (a scale and a shift per output, which
    int8 rounds)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.scale = nn.Parameter(torch.rand(16, generator=g) + 0.5)
        self.shift = nn.Parameter(torch.randn(16, generator=g) * 0.1)

    def forward(self, x):
        return nn.functional.avg_pool2d(x, 7).flatten(1) * self.scale + self.shift


def test_a_model_with_no_layer_to_keep_in_float_is_refused_not_searched(setup, tmp_path):
    d, _, _, tune, tgt, _, _ = setup
    fp32 = tmp_path / "pool.onnx"
    export_onnx(PoolOnly().eval(), fp32, (1, 28, 28))
    calib = calibrate(fp32, np.concatenate([tune.x[:64], tune.x[:2] * 30]), "minmax", bias_correction=False)
    ref = onnx_logits(fp32, tune.x)
    split = TuneSplit(tune.x, tune.y, 0.0, ref, tune.x[:16])
    res = AccuracyGate(split, Budget(100.0, 1.0), tmp_path, show_progress=False).run(str(fp32), calib, tgt,
                                                                                      tmp_path / "q.onnx")
    assert not res.passed and res.fallback == [] and [t["layers"] for t in res.search] == [0]
    assert "no layer to keep in float" in res.reason and res.search[0]["agreement"] < 1.0


def test_a_refusal_names_the_agreement_of_each_source(setup, tmp_path):
    """Tune images from two places (here: the first 600 and the last 400 test images, named as two sources): the
    refusal and every trial give the agreement on each, counted independently from the int8 file's logits."""
    d, fp32, calib, tune, tgt, _, sweep = setup
    sources = ["labelled"] * 600 + ["pool b"] * 400
    split = TuneSplit(tune.x, tune.y, tune.ref_top1, tune.ref_logits, tune.sens_x, sources=sources)
    res = AccuracyGate(split, Budget(100.0, 1.0), tmp_path, show_progress=False).run(str(fp32), calib, tgt,
                                                                                      tmp_path / "q.onnx",
                                                                                      max_fallback=0)
    assert not res.passed and res.chosen() is res.search[0]
    same = tune.ref_logits.argmax(1) == onnx_logits(tmp_path / "q.onnx", tune.x, target=tgt).argmax(1)
    parts = res.search[0]["agreement_by_source"]
    assert {k: (v["images"], v["agreement"]) for k, v in parts.items()} == {
        "labelled": (600, pytest.approx(same[:600].mean())), "pool b": (400, pytest.approx(same[600:].mean()))}
    # each source's own reach: the error share that 100% agreement allows on its images alone
    for name, rows in (("labelled", slice(0, 600)), ("pool b", slice(600, None))):
        q = onnx_logits(tmp_path / "q.onnx", tune.x[rows], target=tgt)
        assert parts[name]["error_scale_needed"] == pytest.approx(error_scale_needed(tune.ref_logits[rows], q, 1.0))
    assert (f"by source: labelled {same[:600].mean():.1%} of 600 (error to "
            f"{parts['labelled']['error_scale_needed']:.2f}x), pool b {same[600:].mean():.1%} of 400") in res.reason
    assert sweep[0] < 0.97  # the int8 file disagrees: the per-source shares are not both trivially 100%


def test_agreement_by_group_refuses_a_mismatched_list():
    from edgecv.metrics import agreement_by_group

    ref = np.eye(3)[[0, 1, 2, 0, 1]]
    out = np.eye(3)[[0, 1, 2, 1, 2]]  # the last two rows change class
    assert agreement_by_group(ref, out, ["a", "b", "a", "b", "b"]) == {
        "a": {"images": 2, "agreement": 1.0}, "b": {"images": 3, "agreement": pytest.approx(1 / 3)}}
    with pytest.raises(ValueError, match="3 group names for 5 rows"):
        agreement_by_group(ref, out, ["a", "b", "c"])


def test_a_target_with_the_same_quantizer_settings_reuses_the_ranking(setup, tmp_path, monkeypatch):
    """The sensitivity ranking is measured once per set of quantizer settings and int8 arithmetic: a second target
    that writes the same int8 files and computes them alike (a renamed copy of ONNX Runtime) is searched on it and
    says whose it is; a target with other settings (TensorRT's symmetric Q/DQ) is ranked on its own. OpenVINO writes
    the same U8S8 files: it reuses ONNX Runtime's ranking exactly when its logits differ from ONNX Runtime's by at
    most RUNTIME_ALIKE of the int8 error (on a CPU without VNNI its int8 sums saturate, and they may not)."""
    import dataclasses

    from edgecv.export import gates

    d, fp32, calib, tune, tgt, ranked, sweep = setup
    measured = []
    real = gates.sensitivity
    monkeypatch.setattr(gates, "sensitivity", lambda *a, **k: measured.append(a[2].name) or real(*a, **k))
    gate = _gate(setup, sweep[len(ranked) // 2])
    first = gate.run(str(fp32), calib, tgt, tmp_path / "a.onnx")
    twin = dataclasses.replace(tgt, name="onnxruntime-twin")
    second = gate.run(str(fp32), calib, twin, tmp_path / "b.onnx")
    assert measured == ["onnxruntime"] and first.ranked_on == second.ranked_on == "onnxruntime"
    assert second.fallback == first.fallback and (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    from edgecv.export.bundle_writer import _float_layers

    art = {"file": "b.onnx", "target": twin.name, "fallback_layers": second.fallback, "fallback_ranked_on": "onnxruntime"}
    assert "ranked on onnxruntime's runtime (the same int8 files)" in "\n".join(_float_layers(art))
    assert "ranked on" not in "\n".join(_float_layers({**art, "target": "onnxruntime"}))
    other = gate.run(str(fp32), calib, targets.get("tensorrt"), tmp_path / "c.onnx")
    assert measured == ["onnxruntime", "tensorrt"] and other.ranked_on == "tensorrt"
    # another calibration (the same images, a new object: the gate cannot know it is equal) is ranked anew
    recal = calibrate(fp32, np.concatenate([tune.sens_x, tune.sens_x[:2] * 30]), "minmax", bias_correction=False)
    assert gate.run(str(fp32), recal, twin, tmp_path / "d.onnx").ranked_on == "onnxruntime-twin"
    assert measured == ["onnxruntime", "tensorrt", "onnxruntime-twin"]

    if importlib.util.find_spec("openvino") is None:  # an optional extra (.ci/run installs it)
        return
    from edgecv.metrics import mean_kl

    ov = targets.get("openvino")
    quantize(fp32, calib, tmp_path / "e.onnx", tgt)
    a, b = (onnx_logits(tmp_path / "e.onnx", tune.inputs(), target=t) for t in (tgt, ov))
    alike = mean_kl(a, b) <= gates.RUNTIME_ALIKE * mean_kl(tune.ref_logits, a)
    assert gate.run(str(fp32), calib, ov, tmp_path / "f.onnx").ranked_on == ("onnxruntime" if alike else "openvino")
    assert measured[-1] == ("onnxruntime-twin" if alike else "openvino")
