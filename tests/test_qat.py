"""The QAT rung: TensorRT-rule fake quantization, distillation from fp32 without labels, and the export ladder
continuing with it when PTQ and per-layer fallback miss the budget."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import FASHION

from edgecv.compress.qat import finetune, prepare_qat, strip_fake_quant, weighted_layers


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    from edgecv.data.fashion_mnist import load_fashion_mnist
    from edgecv.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_ckpt)
    x, _ = load_fashion_mnist(FASHION, "train")
    data = ((x[:256, None].astype(np.float32) / 255 - 0.286) / 0.353).astype(np.float32)
    return model.eval(), data


def test_fake_quant_follows_tensorrt_rules(tiny):
    """Weights: per output channel, symmetric, at most 255 levels each; inputs: per tensor, scale amax/127."""
    model, x = tiny
    q = prepare_qat(model, x[:64])
    layers = weighted_layers(q)
    assert len(layers) == len(weighted_layers(model)) >= 3
    for name, m in layers.items():
        w = m.weight.detach()  # the parametrized (fake-quantized) weight
        raw = dict(model.named_modules())[name].weight.detach()
        scale = raw.abs().flatten(1).amax(1) / 127
        levels = (w.flatten(1) / scale[:, None])
        assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 127 + 1e-3
    amax = q._edgecv_input_amax
    assert set(amax) == set(layers) and all(v > 0 for v in amax.values())
    with torch.no_grad():
        out_q, out_f = q(torch.from_numpy(x[:32])), model(torch.from_numpy(x[:32]))
    assert not torch.equal(out_q, out_f) and (out_q.argmax(1) == out_f.argmax(1)).float().mean() > 0.8
    plain = strip_fake_quant(q)  # nothing trained yet: the original weights come back
    for name, m in weighted_layers(plain).items():
        assert torch.equal(m.weight, dict(model.named_modules())[name].weight)
    with torch.no_grad():
        assert torch.equal(plain(torch.from_numpy(x[:8])), model(torch.from_numpy(x[:8])))


def test_distillation_pulls_the_int8_model_toward_fp32(tiny):
    model, x = tiny
    held = x[200:]
    ref = model(torch.from_numpy(held)).argmax(1)

    def check(m):
        with torch.no_grad():
            out = m(torch.from_numpy(held))
            kl = torch.nn.functional.kl_div(out.log_softmax(1), model(torch.from_numpy(held)).log_softmax(1),
                                            log_target=True, reduction="batchmean")
        return {"agreement": float((out.argmax(1) == ref).float().mean()), "held_kl": float(kl)}

    q = prepare_qat(model, x[:64])
    before = check(q.eval())
    res = finetune(q, model, x[:200], epochs=3, lr=1e-3, check=check, show_progress=False)
    after = res.history[-1]
    assert res.steps == 3 * 13 and after["held_kl"] < before["held_kl"], (before, res.history)
    assert after["agreement"] >= before["agreement"] - 0.02


def _weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("scores,kept", [((0.5, 0.9, 0.7), 2), ((0.5, 0.9, 0.9), 3)])
def test_qat_keeps_the_weights_of_its_best_epoch(tiny, scores, kept):
    """With ``keep_best`` the student ends with the weights of the epoch that scored highest (a tie goes to the
    later epoch): the same weights as a run stopped after that epoch."""
    model, x = tiny
    it = iter(scores)
    q = prepare_qat(model, x[:64])
    res = finetune(q, model, x[:96], epochs=3, lr=1e-3, check=lambda m: {"score": next(it)},
                   show_progress=False, keep_best="score")
    short = prepare_qat(model, x[:64])
    finetune(short, model, x[:96], epochs=kept, lr=1e-3, show_progress=False)
    other = prepare_qat(model, x[:64])
    finetune(other, model, x[:96], epochs=5 - kept, lr=1e-3, show_progress=False)
    assert res.kept_epoch == kept and [h["score"] for h in res.history] == list(scores)
    got, want, not_want = _weights(q), _weights(short), _weights(other)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not all(torch.equal(got[k], not_want[k]) for k in want)  # the epochs did move the weights


class _RandomViews(torch.utils.data.Dataset):
    """Images under torchvision's random flips and crops, which draw from torch's global generator."""

    def __init__(self, x):
        from torchvision.transforms import v2

        self.x = torch.from_numpy(x)
        self.t = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomResizedCrop(x.shape[-1], scale=(0.5, 1.0))])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.t(self.x[i]), -1


def test_qat_on_random_views_is_repeatable_and_leaves_the_global_generator_alone(tiny):
    """The same seed gives the same weights although the views are drawn at random, and the caller's global
    generator is where it was (a second export in the same process must not depend on the first)."""
    model, x = tiny
    views = _RandomViews(x[:64])
    runs = []
    for caller_seed in (123, 456):  # the caller's global state differs between the two runs
        torch.manual_seed(caller_seed)
        q = prepare_qat(model, x[:64])
        finetune(q, model, views, epochs=2, lr=1e-3, show_progress=False, seed=7)
        after = torch.rand(1)
        torch.manual_seed(caller_seed)
        runs.append((_weights(q), torch.equal(after, torch.rand(1))))
    (w1, kept1), (w2, kept2) = runs
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert kept1 and kept2
    q = prepare_qat(model, x[:64])
    finetune(q, model, views, epochs=2, lr=1e-3, show_progress=False, seed=8)
    assert not all(torch.equal(w1[k], v) for k, v in _weights(q).items())  # the seed does matter


def test_keep_best_needs_a_check(tiny):
    model, x = tiny
    with pytest.raises(ValueError, match="keep_best needs a check"):
        finetune(prepare_qat(model, x[:64]), model, x[:32], epochs=1, show_progress=False, keep_best="score")
    with pytest.raises(ValueError, match="record has no 'score'"):
        finetune(prepare_qat(model, x[:64]), model, x[:32], epochs=1, show_progress=False, keep_best="score",
                 check=lambda m: {"agreement": 1.0})


@pytest.mark.parametrize("method", ["distill", "blocks"])
def test_the_ladder_continues_with_qat_when_ptq_misses(tiny_ckpt, tmp_path, method):
    """A budget PTQ cannot meet on the tiny model (exact agreement, no drop): the export runs the QAT rung for the
    first target that misses, re-gates every missing target on its weights, and says what both rungs reached."""
    from edgecv.cli import cli

    r = CliRunner().invoke(cli, ["export", str(tiny_ckpt), "-o", str(tmp_path / "b"), "--calib", str(FASHION),
                                 "--eval", str(FASHION), "--calib-samples", "128", "--max-drop", "0",
                                 "--min-agreement", "1", "--target", "onnxruntime", "--corruptions", "none",
                                 "--qat-epochs", "1", "--qat-method", method, "--qat-block-steps", "20", "--json"])
    if r.exit_code == 0:  # QAT met the budget: the artefact says so
        m = json.loads(r.output.strip().splitlines()[-1])
        art = next(a for a in m["artifacts"] if a["precision"] == "int8")
        q = art["qat"]
        assert art["rung"].startswith("qat") and q["method"] == method
        if method == "distill":
            assert q["epochs"] == 1 and q["kept_epoch"] == 1
        else:
            assert q["steps_per_block"] == 20 and q["blocks"] == len(q["trace"]) == 6 and q["images"] == 128
        assert q["device"] == "cpu"  # the GPU where PyTorch sees one (tests/test_gpu_distill.py)
        assert not q["ptq_passed"] or q["ptq_float_layers"] > 0  # why QAT ran
        if not q["ptq_passed"]:  # fitted for all int8: gated so, with no fallback search
            assert art["fallback_layers"] == [] and [t["layers"] for t in art["fallback_search"]] == [0]
    else:
        # QAT missed on the tune split, or met it there and not on the evaluation split (a refusal too)
        assert r.exit_code == 2 and ("after QAT:" in r.output or "tune images only" in r.output), r.output[-2000:]
        if "after QAT:" in r.output:  # PTQ missed even with layers in float: the fitted weights, all int8
            assert "after QAT: onnxruntime int8 on the tune split" in r.output
            assert r.output.split("after QAT:")[1].split(";")[0].count("with no layer in float") == 1
        assert not (tmp_path / "b").exists()


def test_the_report_says_why_qat_ran_and_which_epoch_ships():
    from edgecv.export.bundle_writer import _qat_section

    info = {"epochs": 3, "lr": 1e-4, "images": 2000, "tune_agreement_fake_quant_before": 0.990,
            "history": [{"tune_agreement_fake_quant": v} for v in (0.9931, 0.9942, 0.9916)], "kept_epoch": 2}
    art = {"file": "model_int8_trt.onnx", "target": "tensorrt"}
    text = "\n".join(_qat_section({**art, "qat": {**info, "ptq_passed": True, "ptq_float_layers": 1}}))
    assert "PTQ met the budget on the tune images only with 1 layer(s) in float" in text
    assert "99.0% before, then 99.3%, 99.4%, 99.2%. The artefact has epoch 2's weights" in text
    text = "\n".join(_qat_section({**art, "qat": {**info, "kept_epoch": 3, "ptq_passed": False,
                                                   "ptq_float_layers": 25}}))
    assert "PTQ and per-layer fallback missed the budget" in text and "epoch 3's" not in text
    assert _qat_section({**art, "qat": None}) == []
    blocks = {"method": "blocks", "blocks": 18, "steps_per_block": 150, "batch": 32, "lr": 5e-5, "images": 512,
              "seconds": 512.4, "tune_agreement_fake_quant_before": 0.962, "tune_agreement_fake_quant": 0.981,
              "ptq_passed": False, "ptq_float_layers": 25}
    text = "\n".join(_qat_section({**art, "qat": blocks}))
    assert "block-wise reconstruction of 18 blocks, 150 Adam steps of 32 images each (lr 5e-05), on the 512 " \
           "calibration images (512 s on cpu)" in text and "96.2% before, 98.1% after" in text


def test_calibration_method_auto_is_chosen_on_the_tune_split(tiny_ckpt, tmp_path):
    """``--calib-method auto`` calibrates with every method and keeps, per target, the one whose int8 model agrees
    best with fp32 on the tune split; the manifest records what each reached."""
    from edgecv.cli import cli
    from edgecv.recipe import CALIB_METHODS

    r = CliRunner().invoke(cli, ["export", str(tiny_ckpt), "-o", str(tmp_path / "b"), "--calib", str(FASHION),
                                 "--eval", str(FASHION), "--calib-samples", "64", "--calib-method", "auto",
                                 "--max-drop", "100", "--min-agreement", "0", "--target", "tensorrt,onnxruntime",
                                 "--corruptions", "none", "--json"])
    assert r.exit_code == 0, r.output[-2000:]
    m = json.loads(r.output.strip().splitlines()[-1])
    for a in (a for a in m["artifacts"] if a["precision"] == "int8"):
        cal = a["calibration"]
        trials = cal["chosen_from"]
        assert set(trials) == set(CALIB_METHODS) and cal["method"] in CALIB_METHODS
        best = max(t["tune_agreement"] for t in trials.values())
        assert trials[cal["method"]]["tune_agreement"] == best
    bad = CliRunner().invoke(cli, ["export", str(tiny_ckpt), "-o", str(tmp_path / "c"), "--calib-method", "best"])
    assert bad.exit_code == 2 and "--calib-method" in bad.output


def test_qat_replaces_ptq_when_it_passes_and_ptq_missed_or_kept_float_layers_it_does_not_beat():
    """The rung's choice on the tune split (measured on the Fashion-MNIST CNN at a 99.5% floor: PTQ met it only
    with 1-2 layers in float; QAT with none, and was faster on ONNX Runtime, 0.101 vs 0.169 ms, and equal on
    OpenVINO, 0.107 ms each, so OpenVINO kept PTQ's file)."""
    from types import SimpleNamespace

    from edgecv.export.gates import GateResult
    from edgecv.export.qat_rung import take_qat

    def gate(passed, n_float):
        return GateResult("m.onnx", 0.9, 1.0, fallback=[{"node": f"n{i}"} for i in range(n_float)], passed=passed)

    cpu, trt = SimpleNamespace(host_latency=True), SimpleNamespace(host_latency=False)
    timed = []

    def faster(answer):  # stands in for qat_is_faster's timing: which artefact won
        return lambda: timed.append(answer) or answer == "qat"

    assert take_qat(gate(False, 3), gate(True, 2), cpu, faster("ptq"))  # PTQ missed: no timing needed
    assert not take_qat(gate(False, 3), gate(False, 0), cpu, faster("qat"))  # QAT missed too
    assert timed == []
    assert take_qat(gate(True, 1), gate(True, 0), cpu, faster("qat")) and timed == ["qat"]
    assert not take_qat(gate(True, 1), gate(True, 0), cpu, faster("ptq"))  # a float layer can be the faster
    assert take_qat(gate(True, 2), gate(True, 0), trt, faster("ptq"))  # TensorRT: fewer float layers
    assert not take_qat(gate(True, 1), gate(True, 1), trt, faster("qat"))  # no fewer: PTQ's weights stay


@pytest.mark.parametrize("method", ["distill", "blocks"])
def test_qat_weights_are_quantized_without_bias_correction(tiny, tmp_path, method):
    """QAT trains each weight for its own rounding; correcting the bias for that rounding afterwards undoes what it
    learnt (Lite0: TensorRT-target KL to fp32 0.0086 with the correction, 0.0047 without). The QAT artefact keeps
    the fine-tuned model's biases exactly, while PTQ of the same float model corrects them."""
    import onnx
    from onnx import numpy_helper

    from edgecv.export.data import ArraySet
    from edgecv.export.qat_rung import run_qat
    from edgecv.export.quantize import calibrate, quantize
    from edgecv.recipe import ExportConfig

    model, x = tiny
    cal = ArraySet(x[:128], np.zeros(128, np.int64), [], "cal")
    tune = ArraySet(x[128:192], np.zeros(64, np.int64), [], "tune")
    with torch.no_grad():
        ref = model(torch.from_numpy(tune.x)).numpy()
    opts = ExportConfig(qat_epochs=1, qat_lr=1e-3, qat_method=method, qat_block_steps=10)
    qat = run_qat(model, cal, tune, ref, opts, tmp_path, (1, 28, 28), show_progress=False)
    info = qat["info"]
    assert qat["calib"].input_means is None and info["method"] == method and info["device"] == "cpu"
    assert info["steps"] == 8 if method == "distill" else info["steps_per_block"] == 10 and info["images"] == 128
    assert next(model.parameters()).device.type == "cpu"  # the teacher is the shipped model: it stays where it was

    def conv_biases(path):
        g = onnx.load(str(path)).graph
        init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        return [init[n.input[2]] for n in g.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2]

    trained = conv_biases(qat["onnx"])
    assert len(trained) >= 3
    quantize(qat["onnx"], qat["calib"], tmp_path / "qat_int8.onnx", "tensorrt")  # TensorRT's Q/DQ keeps float biases
    for a, b in zip(trained, conv_biases(tmp_path / "qat_int8.onnx")):
        np.testing.assert_array_equal(a, b)
    ptq = calibrate(qat["onnx"], cal.x, "minmax", bias_correction=True)
    quantize(qat["onnx"], ptq, tmp_path / "ptq_int8.onnx", "tensorrt")
    assert any(not np.array_equal(a, b) for a, b in zip(trained, conv_biases(tmp_path / "ptq_int8.onnx")))
