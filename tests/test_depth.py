"""Depth pruning (edgecv.compress.depth): which blocks can go in real architectures, the choice judged on real
photographs with pretrained EfficientNet-Lite0, and a depth-pruned model as a checkpoint and an ONNX file."""
import copy

import numpy as np
import pytest
import torch
from torchvision.models import mobilenet_v2, resnet18

from edgecv.compress.depth import drop_blocks, removable_blocks
from edgecv.errors import CheckpointError
from edgecv.models import create_model
from edgecv.models.blocks import SkippedBlock, skip_blocks, skipped_blocks


@pytest.fixture(scope="module")
def photos(imagenet_dir):
    from edgecv.runtime.preprocess import Preprocessor, load_image

    pre = Preprocessor({"input_size": 128, "resize": 146, "crop": 128, "channels": 3, "mean": [127 / 255] * 3,
                        "std": [128 / 255] * 3})
    files = sorted(imagenet_dir.rglob("*.JPEG"))[:192]
    return np.stack([pre(load_image(str(f), 3)) for f in files])


def test_removable_blocks_are_the_identity_skip_blocks():
    assert removable_blocks(create_model("efficientnet_lite0")) == [f"_blocks.{i}" for i in (2, 4, 6, 7, 9, 10, 12,
                                                                                          13, 14)]
    assert len(removable_blocks(mobilenet_v2())) == 10
    assert removable_blocks(resnet18()) == []


def test_a_skipped_block_passes_its_input_through_in_both_families():
    x = torch.randn(2, 3, 64, 64)
    for m, name in ((create_model("efficientnet_lite0").eval(), "_blocks.2"), (mobilenet_v2().eval(), "features.3")):
        seen = []
        skip_blocks(m, [name])
        block = m.get_submodule(name)
        block.register_forward_hook(lambda mod, a, out, seen=seen: seen.append((a[0], out)))
        m(x)
        assert isinstance(block, SkippedBlock) and len(seen) == 1 and seen[0][0] is seen[0][1]
        assert skipped_blocks(m) == [name]
    with pytest.raises(KeyError, match="no block '_blocks.99'"):
        skip_blocks(create_model("efficientnet_lite0"), ["_blocks.99"])


@pytest.mark.slow  # pretrained Lite0 on real photographs, a quality check (the export's drop-blocks path runs in
# CI): python3 -m pytest -m slow (docs/benchmarks.md)
def test_the_blocks_chosen_cost_least_per_mac_and_move_the_output_less_than_the_rest(photos):
    """Pretrained Lite0 at 128 px, 3 blocks dropped, chosen on 96 photographs, judged on 96 others against the
    unpruned network: the chosen three move its output (KL) less, and keep more top-1 answers, than the three that
    score worst."""
    from edgecv.compress.depth import _kl, _logits

    base = create_model("efficientnet_lite0", pretrained=True).eval()
    fit, held = photos[:96], torch.from_numpy(photos[96:])
    ref = _logits(base, held)
    m, rep = drop_blocks(copy.deepcopy(base), 3, fit, (3, 128, 128))
    ranked = sorted(rep.scores, key=rep.scores.get)
    assert rep.dropped == sorted(ranked[:3], key=lambda n: int(n.split(".")[1])) == skipped_blocks(m)
    assert rep.macs_after < rep.macs_before and set(rep.kl) == set(rep.scores) == set(removable_blocks(base))
    worst = skip_blocks(copy.deepcopy(base), ranked[-3:])
    chosen_out, worst_out = _logits(m, held), _logits(worst, held)
    kl = {"chosen": _kl(ref, chosen_out), "worst": _kl(ref, worst_out)}
    agree = {k: float((o.argmax(1) == ref.argmax(1)).float().mean()) for k, o in (("chosen", chosen_out),
                                                                                   ("worst", worst_out))}
    print(rep.dropped, ranked[-3:], kl, agree)
    assert kl["chosen"] < 0.8 * kl["worst"] and agree["chosen"] > agree["worst"], (kl, agree)


@pytest.mark.parametrize("n, images, msg", [(0, True, "has 9 removable"), (10, True, "has 9 removable"),
                                            (2, False, "needs calibration images")])
def test_bad_requests_are_refused_by_name(n, images, msg):
    x = np.zeros((4, 3, 64, 64), np.float32) if images else np.zeros((0, 3, 64, 64), np.float32)
    with pytest.raises(ValueError, match=msg):
        drop_blocks(create_model("efficientnet_lite0"), n, x, (3, 64, 64))
    with pytest.raises(ValueError, match="ResNet has no removable residual blocks"):
        drop_blocks(resnet18(), 1, np.zeros((4, 3, 64, 64), np.float32), (3, 64, 64))


def test_depth_pruned_checkpoint_round_trips_and_a_tampered_one_is_refused(tmp_path, photos):
    from edgecv.export.onnx_export import compare_with_torch, export_onnx
    from edgecv.models.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint

    m, rep = drop_blocks(create_model("efficientnet_lite0", num_classes=7).eval(), 4, photos[:32], (3, 128, 128))
    ck = make_checkpoint(m, "efficientnet_lite0", {}, [str(i) for i in range(7)], {"input_size": 128})
    assert ck["skipped_blocks"] == rep.dropped and not any(k.startswith(rep.dropped[0] + ".") for k in ck["state_dict"])
    save_checkpoint(ck, tmp_path / "d.pt")
    loaded, _ = load_checkpoint(tmp_path / "d.pt")
    x = torch.from_numpy(photos[:4])
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
    export_onnx(loaded, tmp_path / "d.onnx", (3, 128, 128))
    assert compare_with_torch(loaded, str(tmp_path / "d.onnx"), x)["max_abs_diff"] < 1e-4
    for bad, msg in ((["_blocks.99"], "no block '_blocks.99'"), ("_blocks.2", "'skipped_blocks': expected a list"),
                     ([], "weights do not fit")):
        save_checkpoint({**ck, "skipped_blocks": bad}, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match=msg):
            load_checkpoint(tmp_path / "bad.pt")


def test_export_drops_blocks_before_pruning_and_records_it(tmp_path, imagenet_dir):
    """`edgecv export --drop-blocks 3 --prune 0.3` of a MobileNetV2 on Caltech-101 photographs at 64 px: three
    residual blocks go first, then the remaining blocks' channels; the manifest, the report and the bundle's pruned
    checkpoint (rebuilt with its blocks skipped) all say which."""
    import json

    from conftest import export_mobilenet_caltech

    from edgecv.models.checkpoint import load_checkpoint

    out = export_mobilenet_caltech(tmp_path, imagenet_dir, {"drop_blocks": 3, "prune": 0.3, "distill": False})
    s = json.loads((out / "manifest.json").read_text())["summary"]
    d, p = s["depth"], s["prune"]
    assert len(d["dropped_blocks"]) == 3 and d["candidates"] == 10 and d["macs_after"] < d["macs_before"]
    assert p["macs_before"] == d["macs_after"]  # channels were pruned after the blocks went
    assert not any(name.startswith(d["dropped_blocks"][0] + ".") for name in p["channels"])
    model, ck = load_checkpoint(out / "pruned_model.pt")
    assert ck["skipped_blocks"] == d["dropped_blocks"] and skipped_blocks(model) == d["dropped_blocks"]
    assert f"3 of 10 residual blocks ({', '.join(d['dropped_blocks'])})" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, msg", [
    (["--drop-blocks", "1"], "--drop-blocks 1: FashionCNN has no removable residual blocks (MobileNetV2"),
    (["--drop-blocks", "-1"], "--drop-blocks: must be >= 0 and <= 64, got -1"),
    (["--drop-blocks", "1", "--distill"], "--drop-blocks 1: FashionCNN has no removable")])
def test_drop_blocks_on_a_model_without_them_is_refused_and_writes_nothing(args, msg, tmp_path, tiny_ckpt):
    from click.testing import CliRunner
    from conftest import TINY_RECIPE

    from edgecv.cli import cli

    out = tmp_path / "b"
    r = CliRunner().invoke(cli, ["export", str(TINY_RECIPE), "-o", str(out), "--corruptions", "none",
                                 "--set", f"checkpoint={tiny_ckpt}", *args])
    assert r.exit_code == 2 and msg in r.output, r.output
    assert "calibration" not in r.output  # refused before any image set is read
    assert not out.exists()
