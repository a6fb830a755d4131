"""Pruning by reconstruction (edgecv.compress.reconstruct): the units found in real architectures, the refit's
arithmetic (exact when nothing is removed), the pruned model as a checkpoint and an ONNX file, and on pretrained
EfficientNet-Lite0 with real photographs it keeps far more of the network's answers than magnitude pruning."""
import numpy as np
import pytest
import torch
from torchvision.models import mobilenet_v2, resnet18

from edgecv.compress.macs import count_macs
from edgecv.compress.prune import prune_channels, resolve_method
from edgecv.compress.reconstruct import find_units, kept_count, prune_hidden
from edgecv.models import create_model


def _mnv2():
    torch.manual_seed(0)
    m = mobilenet_v2(num_classes=10).eval()
    # random BatchNorm statistics, so that the BN folding is exercised rather than the identity
    g = torch.Generator().manual_seed(1)
    for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5, generator=g)
        bn.running_var.uniform_(0.5, 2.0, generator=g)
        bn.weight.data.uniform_(0.5, 1.5, generator=g)
        bn.bias.data.uniform_(-0.2, 0.2, generator=g)
    return m


def test_units_of_lite0_and_mobilenet_v2_and_none_elsewhere():
    lite = find_units(create_model("efficientnet_lite0"))
    assert len(lite) == 16 and lite[0].name == "stem" and lite[0].hidden == 32
    assert [u.skip for u in lite[1:4]] == [False, True, False]  # 16->24 s2, 24->24, 24->40 s2
    assert sum(u.hidden for u in lite) == 32 + 96 + 144 * 2 + 240 * 2 + 480 * 3 + 672 * 3 + 1152 * 4
    mn = find_units(mobilenet_v2())
    assert len(mn) == 17 and mn[0].name == "stem" and sum(u.skip for u in mn) == 10
    assert find_units(resnet18()) == []
    assert resolve_method(resnet18(), "auto", True) == "magnitude"
    assert resolve_method(mobilenet_v2(), "auto", True) == "reconstruct"
    assert resolve_method(mobilenet_v2(), "auto", False) == "magnitude"
    with pytest.raises(ValueError, match="ResNet has no inverted-residual blocks"):
        resolve_method(resnet18(), "reconstruct", True)


def test_kept_count_rounds_and_never_empties():
    assert kept_count(96, 0.5, 8) == 48
    assert kept_count(144, 0.7, 8) == 40  # 43.2 -> 40
    assert kept_count(16, 0.99, 8) == 8
    assert kept_count(32, 0.01, 8) == 32


def test_refit_reproduces_the_network_when_every_channel_stays():
    m = _mnv2()
    x = torch.randn(64, 3, 64, 64, generator=torch.Generator().manual_seed(2)).numpy()
    with torch.no_grad():
        ref = m(torch.from_numpy(x[:16]))
    errors = prune_hidden(m, x, 0.01, round_to=8, show_progress=False)  # 0.01 rounds back to every channel
    assert max(errors.values()) < 1e-4
    with torch.no_grad():
        out = m(torch.from_numpy(x[:16]))
    assert torch.allclose(out, ref, atol=1e-3 * float(ref.abs().max())), float((out - ref).abs().max())


@pytest.mark.parametrize("family", ["efficientnet_lite0", "mobilenet_v2"])
def test_a_pass_fed_from_a_kept_block_input_equals_the_whole_pass(family):
    """The refit starts each pass at the previous block with its kept input (the layers before it see one image):
    what it captures must equal a whole forward pass, batch by batch, the skip unit's input included."""
    from edgecv.compress.reconstruct import _capture

    m = create_model("efficientnet_lite0").eval() if family == "efficientnet_lite0" else _mnv2()
    x = torch.randn(40, 3, 64, 64, generator=torch.Generator().manual_seed(4))  # two batches: 32 and 8
    units = find_units(m)
    prev, u = units[1], units[2]
    assert u.skip and u.entry is not None
    taps = {"hidden": (u.project, "in"), "input": (u.expand, "in")}
    whole, _ = _capture(m, x, taps, stop=u.project)
    _, feed = _capture(m, x, {"h": (prev.project, "in")}, stop=prev.project, keep=prev.entry)
    assert [len(b) for b in feed.batches] == [32, 8]
    fed, _ = _capture(m, x, taps, stop=u.project, feed=feed)
    for k in taps:
        assert whole[k].shape == fed[k].shape and torch.allclose(whole[k], fed[k], atol=1e-5), k
    with pytest.raises(ValueError, match="must stop inside the network"):
        _capture(m, x, taps, feed=feed)  # to the head, which may read the batch size off its one-image input


def test_pruned_model_is_a_smaller_checkpoint_and_onnx(tmp_path):
    from edgecv.export.onnx_export import compare_with_torch, export_onnx
    from edgecv.models.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint

    m = _mnv2()
    x = torch.randn(48, 3, 64, 64, generator=torch.Generator().manual_seed(3)).numpy()
    m, report = prune_channels(m, (3, 64, 64), 0.5, images=x)
    assert report.method == "reconstruct" and set(report.refit_error) == {u.name for u in find_units(m)}
    assert 0.45 < report.macs_after / report.macs_before < 0.6
    assert report.channels["features.2.conv.0.0"] == (96, 48)
    path = tmp_path / "pruned.pt"
    save_checkpoint(make_checkpoint(m, "mobilenet_v2", {}, [str(i) for i in range(10)],
                                    {"input_size": 64}, pruned=True), path)
    loaded, _ = load_checkpoint(path)
    batch = torch.from_numpy(x[:4])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(batch), m.eval()(batch))
    export_onnx(loaded, tmp_path / "pruned.onnx", (3, 64, 64))
    assert compare_with_torch(loaded, str(tmp_path / "pruned.onnx"), batch)["max_abs_diff"] < 1e-4


@pytest.mark.slow  # Lite0 at 224 px on real photographs, a quality check (its code paths run in CI on smaller
# models): python3 -m pytest -m slow (docs/benchmarks.md); CI must fit 15 minutes on the slowest 2-core machine
def test_lite0_reconstruct_keeps_answers_magnitude_loses(imagenet_dir):
    """Pretrained Lite0, 30% pruned: refitted on 96 photographs, judged on 100 others by top-1 agreement with the
    unpruned network. Magnitude pruning (Torch-Pruning, all layer groups) at the same ratio is the baseline."""
    from edgecv.runtime.preprocess import Preprocessor, load_image

    pre = Preprocessor({"input_size": 224, "resize": 256, "crop": 224, "channels": 3, "mean": [127 / 255] * 3,
                        "std": [128 / 255] * 3})
    files = sorted(imagenet_dir.rglob("*.JPEG"))[:196]
    x = np.stack([pre(load_image(str(f), 3)) for f in files])
    fit, held = x[:96], torch.from_numpy(x[96:])
    base = create_model("efficientnet_lite0", pretrained=True).eval()
    with torch.no_grad():
        ref = base(held).argmax(1)
    agree = {}
    for method in ("reconstruct", "magnitude"):
        m = create_model("efficientnet_lite0", pretrained=True).eval()
        m, report = prune_channels(m, (3, 224, 224), 0.3, images=fit, method=method)
        with torch.no_grad():
            agree[method] = float((m.eval()(held).argmax(1) == ref).float().mean())
        if method == "reconstruct":
            assert 0.6 < report.macs_after / count_macs(base, (3, 224, 224))[0] < 0.8
    print(agree)
    assert agree["reconstruct"] >= 0.7 and agree["magnitude"] <= 0.3, agree


@pytest.mark.slow  # Lite0 at 224 px on real photographs, a quality check (its code paths run in CI on smaller
# models): python3 -m pytest -m slow (docs/benchmarks.md); CI must fit 15 minutes on the slowest 2-core machine
def test_distill_adamw_with_frozen_batchnorm_pulls_the_pruned_lite0_to_its_teacher(imagenet_dir):
    """The export's recovery step after reconstruct (the Caltech recipe's settings): AdamW, BatchNorm statistics
    frozen, mixed precision on. 12 steps on 128 photographs at 128 px must cut the KL to the teacher there and
    leave every running statistic as it was; SGD with BatchNorm in train mode moves them (so the check can fail)."""
    import copy

    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from edgecv.compress.distill import DistillConfig, distill
    from edgecv.runtime.preprocess import Preprocessor, load_image

    pre = Preprocessor({"input_size": 128, "resize": 146, "crop": 128, "channels": 3, "mean": [127 / 255] * 3,
                        "std": [128 / 255] * 3})
    x = torch.from_numpy(np.stack([pre(load_image(str(f), 3)) for f in sorted(imagenet_dir.rglob("*.JPEG"))[:128]]))
    teacher = create_model("efficientnet_lite0", pretrained=True).eval()
    with torch.no_grad():
        t_logits = teacher(x)
    pruned, _ = prune_channels(copy.deepcopy(teacher), (3, 128, 128), 0.5, images=x[:64].numpy())

    def kl(m):
        with torch.no_grad():
            return float(F.kl_div(F.log_softmax(m.eval()(x), 1), F.log_softmax(t_logits, 1), log_target=True,
                                  reduction="batchmean"))

    def stats(m):
        return [b.running_var.clone() for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]

    loader = DataLoader(TensorDataset(x, t_logits.argmax(1)), 32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    for optimizer, bn in (("adamw", "frozen"), ("sgd", "train")):
        student = copy.deepcopy(pruned)
        before, kl0 = stats(student), kl(student)
        # the AdamW run in bfloat16 where this CPU has it natively (the recipe's train.amp), teacher included
        distill(student, teacher, loader, loader, DistillConfig(epochs=3, lr=3e-4 if optimizer == "adamw" else 0.01,
                alpha=1.0, optimizer=optimizer, batchnorm=bn, amp=optimizer == "adamw"), show_progress=False)
        same = all(torch.equal(a, b) for a, b in zip(before, stats(student)))
        # the teacher (the export's source model) is frozen while it teaches, and handed back as it came
        assert all(p.requires_grad for p in teacher.parameters())
        if optimizer == "adamw":
            assert same and kl(student) < 0.8 * kl0, (kl0, kl(student))
        else:
            assert not same


def test_export_prunes_by_reconstruct_and_records_it(tmp_path, imagenet_dir):
    """`edgecv export --prune 0.5` of a MobileNetV2 (auto -> reconstruct) on Caltech-101 photographs at 64 px: the
    blocks are refitted on the calibration images, and the manifest and report say how it was pruned."""
    import json

    from conftest import export_mobilenet_caltech

    out = export_mobilenet_caltech(tmp_path, imagenet_dir, {"prune": 0.5, "distill": False})
    m = json.loads((out / "manifest.json").read_text())
    p = m["summary"]["prune"]
    assert p["method"] == "reconstruct" and len(p["refit_error"]) == 17
    assert p["channels"]["features.2.conv.0.0"] == [96, 48] and p["macs_after"] < 0.6 * p["macs_before"]
    # the default multiple, where ONNX Runtime's int8 kernels are fast (144 * 0.5 = 72 would do for multiples of 8)
    cut = [after for before, after in p["channels"].values() if after != before]
    assert cut and all(c % 16 == 0 for c in cut), p["channels"]
    ms = {a["precision"]: a["latency_ms"] for a in m["artifacts"]}  # and it is timed against the unpruned int8
    ref = m["summary"]["baseline"]["int8_latency_ms"]["onnxruntime"]
    assert [a["speedup_vs_unpruned_int8"] for a in m["artifacts"] if a["precision"] == "int8"] == [ref / ms["int8"]]
    assert "50% of channels by reconstruct" in (out / "report.md").read_text()
