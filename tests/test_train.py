import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_RECIPE

from edgecv.models.checkpoint import read_checkpoint
from edgecv.recipe import load_recipe
from edgecv.train.loop import train


def test_train_writes_outputs(tiny_ckpt):
    out = tiny_ckpt.parent
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"top1", "top5", "n"} <= set(metrics) and metrics["n"] == 10000
    assert metrics["top1"] > 0.3  # 10 classes: well above chance after one epoch on 2,000 images
    assert (out / "confusion.png").stat().st_size > 1000
    assert (out / "recipe.yaml").exists() and len((out / "log.jsonl").read_text().splitlines()) == 1
    ck = read_checkpoint(out / "model.pt")
    assert ck["arch"] == "tiny_cnn" and len(ck["classes"]) == 10 and ck["preprocess"]["input_size"] == 28


def test_resume_continues_exactly(tmp_path):
    over = ["train.epochs=2", "data.train_limit=512"]
    full = train(load_recipe(TINY_RECIPE, over), tmp_path / "full", show_progress=False)
    # Interrupt after epoch 0 (a 1-epoch run leaves last.pt at epoch 0), then resume to 2 epochs.
    r1 = load_recipe(TINY_RECIPE, over)
    r1.train.epochs = 2
    part = tmp_path / "part"
    import edgecv.train.loop as loop

    class Stop(Exception):
        pass

    orig = loop.EpochLog.write
    def write_then_stop(self, rec):
        orig(self, rec)
        if rec["epoch"] == 0:
            raise Stop()
    loop.EpochLog.write = write_then_stop
    try:
        try:
            train(r1, part, show_progress=False)
        except Stop:
            pass
    finally:
        loop.EpochLog.write = orig
    assert read_checkpoint(part / "last.pt")["epoch"] == 0
    resumed = train(load_recipe(TINY_RECIPE, over), part, resume=True, show_progress=False)
    a, b = read_checkpoint(tmp_path / "full" / "model.pt"), read_checkpoint(part / "model.pt")
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k].float(), b["state_dict"][k].float(), atol=1e-6), k
    assert resumed["top1"] == full["top1"]


def test_two_process_ddp_on_cpu(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m", "edgecv",
           "train", str(TINY_RECIPE), "-o", str(tmp_path / "ddp"), "--set", "train.epochs=1", "--set",
           "data.train_limit=512"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["n"] == 10000  # rank results all-reduced over the full test set


def test_ddp_with_a_frozen_backbone_runs_both_phases(tmp_path):
    """torchrun, 2 ranks (gloo): the freeze epoch crashed both ranks ("Expected to have finished reduction")."""
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "edgecv",
                        "train", str(TINY_RECIPE), "-o", str(out), "--set", "model.freeze_backbone_epochs=1",
                        "--set", "train.epochs=2", "--set", "data.train_limit=512"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["backbone_frozen"] for e in log] == [True, False]
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2


def test_frozen_backbone_keeps_its_batchnorm_statistics(tmp_path):
    from edgecv.models.heads import find_head

    recipe = load_recipe(TINY_RECIPE, ["train.epochs=1", "model.freeze_backbone_epochs=1", "data.train_limit=256",
                                       "model.name=fashion_cnn", "model.args={}"])
    from edgecv.train.loop import build_model

    torch.manual_seed(recipe.train.seed)
    before = build_model(recipe, 10)
    bns = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in before.named_modules()
           if isinstance(m, torch.nn.BatchNorm2d)}
    assert bns, "the test model needs BatchNorm layers"
    train(recipe, tmp_path / "run", show_progress=False)
    from edgecv.models.checkpoint import load_checkpoint

    after, _ = load_checkpoint(tmp_path / "run" / "model.pt")
    for n, m in after.named_modules():
        if n in bns:
            assert torch.equal(m.running_mean, bns[n][0]) and torch.equal(m.running_var, bns[n][1]), n
    head_name, head = find_head(after)
    assert not torch.equal(head.weight, find_head(before)[1].weight)  # the head did train


def test_distill_without_prune_is_refused(tiny_ckpt):
    from edgecv.errors import RecipeError
    from edgecv.export.pipeline import resolve_options

    r = load_recipe(TINY_RECIPE)
    with pytest.raises(RecipeError, match="--distill: needs --prune"):
        resolve_options(r, {"prune": 0.0})
    assert resolve_options(r, {"prune": 0.0, "distill": False}).distill is False


def test_head_first_on_cached_features_then_fine_tune_with_frozen_batchnorm(tmp_path):
    """The transfer recipe's two phases: the head alone on features computed once, then every layer fine-tuned
    with ``train.batchnorm: frozen`` (running statistics kept, scale, shift and convolutions learning)."""
    from edgecv.models.checkpoint import load_checkpoint
    from edgecv.models.heads import find_head
    from edgecv.train.loop import build_model

    recipe = load_recipe(TINY_RECIPE, ["train.epochs=1", "train.head_epochs=40", "train.head_lr=0.5",
                                       "train.batchnorm=frozen", "data.train_limit=256", "model.name=fashion_cnn",
                                       "model.args={}"])
    torch.manual_seed(recipe.train.seed)
    before = build_model(recipe, 10)
    result = train(recipe, tmp_path / "run", show_progress=False)
    head_phase = result["history"][0]
    assert head_phase["phase"] == "head (cached features)" and head_phase["epochs"] == 40
    assert head_phase["val_top1"] > 0.3  # ten classes: a trained head, far above chance
    after, _ = load_checkpoint(tmp_path / "run" / "model.pt")
    convs_moved = bns = 0
    for (n, m), m0 in zip(after.named_modules(), before.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):
            bns += 1
            assert torch.equal(m.running_mean, m0.running_mean) and torch.equal(m.running_var, m0.running_var), n
        if isinstance(m, torch.nn.Conv2d):
            convs_moved += not torch.equal(m.weight, m0.weight)
    assert bns and convs_moved  # statistics kept, weights fine-tuned
    assert not torch.equal(find_head(after)[1].weight, find_head(before)[1].weight)
    with pytest.raises(Exception, match="train.batchnorm"):
        load_recipe(TINY_RECIPE, ["train.batchnorm=sometimes"])
