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
    assert {"top1", "top5", "n"} <= set(metrics) and metrics["n"] == 2000  # the tiny recipe's data.val_limit
    assert metrics["top1"] > 0.3  # 10 classes: well above chance after one epoch on 2,000 images
    from edgecv.train.engine import cpu_has_bf16

    assert metrics["mixed_precision"] == ("bfloat16" if cpu_has_bf16() else "off")  # the recipe's train.amp default
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


def test_ddp_with_a_frozen_backbone_runs_both_phases(tmp_path):
    """torchrun, 2 ranks (gloo) on the CPU, a frozen epoch then a plain one: the freeze epoch crashed both ranks
    ("Expected to have finished reduction"); the results are all-reduced over both ranks."""
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "edgecv",
                        "train", str(TINY_RECIPE), "-o", str(out), "--set", "model.freeze_backbone_epochs=1",
                        "--set", "train.epochs=2", "--set", "data.train_limit=512"],
                       cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["backbone_frozen"] for e in log] == [True, False]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["n"] == 2000  # rank results all-reduced over all of data.val_limit's images


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
    from edgecv.export.options import resolve_options

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


def _cpu_flags() -> set:
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_mixed_precision_dtype_follows_the_device_and_this_cpu():
    """amp: float16 on a GPU, bfloat16 on a CPU only where it computes bfloat16 natively (the kernel's flags), never
    when switched off."""
    from edgecv.train.engine import amp_dtype, cpu_has_bf16

    native = bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert cpu_has_bf16() == native
    assert amp_dtype("cpu", True) == (torch.bfloat16 if native else None)
    assert amp_dtype("cuda", True) == torch.float16
    assert amp_dtype("cpu", False) is None and amp_dtype("cuda", False) is None


def test_cpu_batches_go_channels_last_with_the_same_values():
    from edgecv.train.engine import to_device

    x = torch.randn(4, 3, 16, 16)
    y = to_device(x, "cpu")
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, y)
    flat = torch.randn(4, 10)
    assert torch.equal(to_device(flat, "cpu"), flat)


@pytest.mark.skipif(not _cpu_flags() & {"avx512_bf16", "amx_bf16"},
                    reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_bfloat16_training_step_on_cpu_tracks_fp32(imagenet_dir):
    """One Step of pretrained Lite0 on 32 ImageNet photographs under bfloat16 autocast: the logits and loss come back
    in fp32 close to the fp32 step's, the same top-1 on nearly every photograph, and the weights stay fp32."""
    import copy

    import numpy as np
    import torch.nn.functional as F

    from edgecv.models.registry import create_model
    from edgecv.runtime.preprocess import Preprocessor, load_image
    from edgecv.train.engine import Step, to_device

    pre = Preprocessor({"input_size": 160, "resize": 182, "crop": 160, "channels": 3, "mean": [127 / 255] * 3,
                        "std": [128 / 255] * 3})
    x = torch.from_numpy(np.stack([pre(load_image(str(f), 3)) for f in sorted(imagenet_dir.rglob("*.JPEG"))[:32]]))
    base = create_model("efficientnet_lite0", pretrained=True).eval()
    with torch.no_grad():
        target = base(x).argmax(1)
    out = {}
    for dtype in (None, torch.bfloat16):
        m = copy.deepcopy(base).eval()
        step = Step(torch.optim.SGD(m.parameters(), lr=1e-3), amp_dtype=dtype)
        logits, loss = step.loss(m, to_device(x, "cpu"), target)
        step.update(loss)
        out[dtype] = (logits.detach(), float(loss.detach()), m)
    (l32, loss32, m32), (l16, loss16, m16) = out[None], out[torch.bfloat16]
    assert l16.dtype == torch.float32 and all(p.dtype == torch.float32 for p in m16.parameters())
    assert abs(loss16 - loss32) < 0.05 * loss32 + 0.02, (loss16, loss32)
    assert (l16.argmax(1) == l32.argmax(1)).float().mean() >= 0.9
    # the update: bfloat16's gradients point where fp32's do
    with torch.no_grad():
        d16, d32 = (torch.cat([(p - q).flatten() for p, q in zip(m.parameters(), base.parameters())])
                    for m in (m16, m32))
        cosine = float(F.cosine_similarity(d16, d32, 0))
    assert float(d32.norm()) > 0 and cosine > 0.9, cosine


def test_eval_of_a_recipe_without_data_uses_its_own_held_out_split(imagenet_dir, tmp_path):
    """``edgecv eval RECIPE`` with no --data judges the held-out split the training judged (here by content hash),
    so it reproduces the training's own top-1 on the same images; a checkpoint or a bundle needs --data."""
    from click.testing import CliRunner

    from edgecv.cli import cli

    sets = [f"data.path={imagenet_dir}", "data.kind=wnid_folder", "data.split=hash", "data.holdout=0.2",
            "data.input_size=32", "data.resize=36", "data.channels=3", "data.mean=[0.5,0.5,0.5]",
            "data.std=[0.25,0.25,0.25]", "model.args={width: 8, in_channels: 3}", "data.train_limit=null",
            "data.augment={}", "train.epochs=1"]
    result = train(load_recipe(TINY_RECIPE, sets), tmp_path / "run", show_progress=False)
    args = ["eval", str(TINY_RECIPE), "--json"] + [a for s in sets + [f"checkpoint={tmp_path / 'run' / 'model.pt'}"]
                                                     for a in ("--set", s)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert got["n"] == result["n"] and 50 < got["n"] < 150  # a fifth of the 500 samples
    assert got["top1"] == pytest.approx(result["top1"], abs=1e-9)
    assert got["data"].endswith("(held-out split)")
    r = CliRunner().invoke(cli, ["eval", str(tmp_path / "run" / "model.pt")])
    assert r.exit_code == 2 and "a checkpoint carries no data; name the images with --data" in r.output


def test_confusion_png_of_a_thousand_classes_stays_small(tmp_path):
    """A 1,000-class recipe (ImageNet) ends its training with a confusion PNG; a figure grown with the classes
    asked for 16 GB and the kernel killed the process. Run under an 8 GiB cap, so a regression fails, not the host."""
    code = f"""
import resource
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
import numpy as np
from edgecv.train.loop import save_confusion_png
conf = (np.random.default_rng(0).random((1000, 1000)) < 0.005).astype(int) + 40 * np.eye(1000, dtype=int)
save_confusion_png(conf, [f"c{{i}}" for i in range(1000)], {str(tmp_path / "c.png")!r}, "held-out")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    import cv2

    img = cv2.imread(str(tmp_path / "c.png"))
    assert img is not None and img.shape[0] <= 1500 and img.shape[1] <= 1600, img.shape
    blue = img[..., 0].astype(int) - img[..., 2]  # the diagonal (89% of each row) is drawn: blue, not white
    assert (blue > 60).sum() > 1000


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_drops_a_log_record_cut_short_by_a_kill(fmt, tmp_path, caplog):
    """Epoch records are appended; a kill during the append leaves half a line, which --resume must survive
    (it was an internal JSONDecodeError): the damaged record is dropped and counted, the others kept."""
    from edgecv.train.loop import EpochLog

    log = EpochLog(tmp_path, fmt)
    for e in range(3):
        log.write({"epoch": e, "val_top1": 0.5 + e / 10})
    with log.path.open("a") as f:
        f.write('{"epoch": 3, "val_to' if fmt == "jsonl" else "three,0.8")  # cut short / not an epoch number
    log.reset_after(1)
    rows = log._records()
    assert [r["epoch"] for r in rows] == [0, 1] and float(rows[1]["val_top1"]) == pytest.approx(0.6)
    assert "dropped 1 damaged record(s)" in caplog.text


def test_a_new_run_over_an_earlier_one_is_refused_unless_forced(tmp_path):
    """`edgecv train` into a folder holding a finished run replaced its model (hours of work) without a word, and
    into an interrupted run threw away the epochs --resume would have kept. Both are refused, naming what is there
    and the command that continues or replaces it; --force replaces it."""
    from conftest import invoke

    run = tmp_path / "run"
    base = ["train", TINY_RECIPE, "-o", run, "--set", "train.epochs=1", "--set", "data.train_limit=256"]
    assert invoke(*base).exit_code == 0
    first = (run / "model.pt").read_bytes()
    top1 = json.loads((run / "metrics.json").read_text())["top1"]
    r = invoke(*base)
    assert r.exit_code == 2 and f"holds a finished training run (model.pt, top-1 {top1:.4f}); choose another -o" \
        in r.output and "--force" in r.output, r.output
    assert (run / "model.pt").read_bytes() == first
    r = invoke(*base, "--set", "train.lr=0.01", "--force")
    assert r.exit_code == 0, r.output
    assert (run / "model.pt").read_bytes() != first and "lr: 0.01" in (run / "recipe.yaml").read_text()
    (run / "model.pt").unlink()  # as a run killed after its first epoch leaves it
    r = invoke(*base)
    assert r.exit_code == 2 and "holds an interrupted training run (last.pt)" in r.output, r.output
    assert f"{base[1]} -o {run} --resume` continues it" in r.output
    r = invoke(*base, "--resume", "--force")
    assert r.exit_code == 2 and "give one" in r.output
    assert invoke(*base, "--resume").exit_code == 0 and (run / "model.pt").is_file()


def test_resume_with_another_model_or_optimizer_is_refused_by_name(tmp_path):
    """--resume under a recipe edited since the run began (a wider model, another optimizer) was an internal
    RuntimeError or KeyError; it names the checkpoint, what does not fit and the recipe the run started with."""
    from click.testing import CliRunner

    from edgecv.cli import cli

    base = ["train", str(TINY_RECIPE), "-o", str(tmp_path / "run"), "--set", "train.epochs=2",
            "--set", "data.train_limit=256"]
    r = CliRunner().invoke(cli, base + ["--set", "train.epochs=1"])
    assert r.exit_code == 0, r.output
    (tmp_path / "run" / "model.pt").unlink()
    for change, needle in [("model.args.width=16", "size mismatch for"), ("train.optimizer=adamw", "'step'")]:
        r = CliRunner().invoke(cli, base + ["--resume", "--set", change])
        assert r.exit_code == 2, r.output
        assert "last.pt: was saved by a different model or schedule than this recipe describes" in r.output
        assert needle in r.output and "recipe.yaml" in r.output


def test_a_chart_that_cannot_be_drawn_does_not_fail_a_trained_run(tmp_path, monkeypatch, caplog):
    """The confusion chart is drawn after model.pt and metrics.json are written; matplotlib failing on it (a class
    name its fonts could not lay out ended a finished run in an internal error) is a warning."""
    import edgecv.train.loop as loop

    def cannot_draw(*args, **kwargs):
        raise TypeError("set_text(): incompatible function arguments")

    monkeypatch.setattr(loop, "save_confusion_png", cannot_draw)
    m = train(load_recipe(TINY_RECIPE, ["train.epochs=1", "data.train_limit=256"]), tmp_path / "run",
              show_progress=False)
    assert 0 <= m["top1"] <= 1 and (tmp_path / "run" / "model.pt").is_file()
    assert (tmp_path / "run" / "metrics.json").is_file() and not (tmp_path / "run" / "confusion.png").exists()
    assert "confusion.png: not drawn (TypeError: set_text(): incompatible function arguments)" in caplog.text
