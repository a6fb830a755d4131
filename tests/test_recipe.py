import json
import os

import pytest
import yaml
from conftest import ROOT, TINY_RECIPE

from edgecv.errors import RecipeError
from edgecv.recipe import load_recipe, recipe_to_dict, save_recipe


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_shipped_recipes_load():
    names = {p.stem: load_recipe(p) for p in (ROOT / "recipes").glob("*.yaml")}
    assert {"fashion_mnist", "seed_convnet", "efficientnet_lite0_imagenet", "transfer_lite0_fashion"} <= set(names)
    lite = names["efficientnet_lite0_imagenet"]
    # TF-style (x - 127) / 128 expressed on 0..1 pixels
    assert lite.data.mean[0] * 255 == pytest.approx(127, abs=1e-4)
    assert lite.data.std[0] * 255 == pytest.approx(128, abs=1e-4)
    seed = names["seed_convnet"]
    assert (seed.train.optimizer, seed.train.lr, seed.train.momentum, seed.train.weight_decay) == ("sgd", 0.01, 0.9, 5e-4)


def test_a_recipe_path_that_is_no_small_file_is_refused_before_it_is_read(tmp_path):
    """A 30 GB file ran the loader out of memory ("internal error: MemoryError"); a FIFO would block on open."""
    huge, fifo, folder = tmp_path / "huge.yaml", tmp_path / "fifo.yaml", tmp_path / "folder.yaml"
    with open(huge, "wb") as f:
        f.truncate(30 << 30)  # sparse: no disk used
    os.mkfifo(fifo)
    folder.mkdir()
    for path, why in ((huge, "32,212,254,720 bytes, over the 16 MB"), (fifo, "a device, pipe or socket"),
                      ("/dev/zero", "a device, pipe or socket"), (folder, "a folder")):
        with pytest.raises(RecipeError, match=f"^{path}: not a recipe file \\({why}"):
            load_recipe(path)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_unknown_key_names_file_and_key(tmp_path):
    p = write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert str(p) in str(e.value) and "train.epoch" in str(e.value) and "epochs" in str(e.value)


def test_wrong_type_names_expected(tmp_path):
    p = write(tmp_path, "train:\n  lr: fast\n")
    with pytest.raises(RecipeError, match=r"train\.lr: expected float, got 'fast'"):
        load_recipe(p)
    p = write(tmp_path, "data:\n  augment:\n    hflip: [1]\n")
    with pytest.raises(RecipeError, match=r"data\.augment\.hflip: expected float"):
        load_recipe(p)


def test_bad_choice_and_override(tmp_path):
    p = write(tmp_path, "train:\n  optimizer: adam\n")
    with pytest.raises(RecipeError, match="train.optimizer"):
        load_recipe(p)
    r = load_recipe(ROOT / "recipes" / "fashion_mnist.yaml", ["train.epochs=3", "train.lr=0.1", "export.targets=[onnxruntime]"])
    assert (r.train.epochs, r.train.lr, r.export.targets) == (3, 0.1, ["onnxruntime"])
    with pytest.raises(RecipeError, match="train.epochs: expected int"):
        load_recipe(ROOT / "recipes" / "fashion_mnist.yaml", ["train.epochs=three"])
    with pytest.raises(RecipeError, match="expected key=value"):
        load_recipe(ROOT / "recipes" / "fashion_mnist.yaml", ["train.epochs"])


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(ROOT / "recipes" / "fashion_mnist.yaml", ["train.epochs=2"])
    save_recipe(r, tmp_path / "recipe.yaml")
    again = load_recipe(tmp_path / "recipe.yaml")
    assert recipe_to_dict(again) == recipe_to_dict(r)
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text())["train"]["epochs"] == 2


@pytest.mark.parametrize("override, needle", [
    ("data.input_size=1", "model 'fashion_cnn' {'width': 32} cannot run at data.input_size 1 with 1 channel(s): "),
    ("model.args.width=0", "model 'fashion_cnn' {'width': 0} cannot run at data.input_size 28"),
    ("model.num_classes=3", "model.num_classes: 3, but the training data has 10 classes: leave it out"),
    # more outputs than class names: training wrote a model.pt that no command could load
    ("model.num_classes=12", "model.num_classes: 12, but the training data has 10 classes: leave it out"),
    # what the network's constructor refuses: these were internal errors (a negative width, an allocation of
    # petabytes), and a model without pretrained weights ignored model.pretrained and trained from scratch
    ("model.args.width=-3", "model 'fashion_cnn': bad arguments {'num_classes': 10, 'width': -3}: Trying to create "
                            "tensor with negative dimension"),
    ("model.args.width=10000000", "model 'fashion_cnn': bad arguments {'num_classes': 10, 'width': 10000000}: too "
                                  "large to build here (it asked for "),
    ("model.pretrained=true", "fashion_cnn has no pretrained weights"),
])
def test_a_network_that_cannot_train_on_the_data_is_refused_by_field_before_training(tmp_path, override, needle):
    """Each was an internal error from inside the first training step (a pooled 0x0 map, a layer of width 0, a
    label past the head's last class), or, for a head wider than the classes, a model.pt no command could load."""
    from conftest import invoke

    recipe = ROOT / "recipes" / "fashion_mnist.yaml"
    r = invoke("train", recipe, "-o", tmp_path / "run", "--set", "data.train_limit=64", "--set", override)
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith(f"error: {recipe}: {needle}"), r.output
    assert "train epoch" not in r.output and not (tmp_path / "run" / "model.pt").exists()


def test_a_recipe_judges_only_a_checkpoint_of_its_own_network_at_a_size_it_runs_at(tiny_ckpt, tmp_path):
    """eval and export take the network from the checkpoint and the data from the recipe: a checkpoint of another
    network was exported silently, and an input size the network cannot run at was an internal error."""
    from conftest import TINY_RECIPE, invoke

    fashion = ROOT / "recipes" / "fashion_mnist.yaml"  # fashion_cnn; tiny_ckpt holds a tiny_cnn
    for cmd in (["eval", fashion, "--limit", "10"], ["export", fashion, "-o", tmp_path / "b"]):
        r = invoke(*cmd, "--set", f"checkpoint={tiny_ckpt}")
        assert r.exit_code == 2 and r.output.strip().splitlines()[-1] == (
            f"error: {tiny_ckpt}: holds a tiny_cnn model, but {fashion} names model 'fashion_cnn': set checkpoint= "
            "to this recipe's run, or use the recipe the checkpoint was trained with"), r.output
        r = invoke(*cmd[:1], TINY_RECIPE, *cmd[2:], "--set", f"checkpoint={tiny_ckpt}", "--set", "data.input_size=2")
        assert r.exit_code == 2 and f"error: {TINY_RECIPE}: data.input_size 2 with 1 channel(s): the tiny_cnn in " \
            f"{tiny_ckpt} cannot run at that size (" in r.output, r.output
    assert not (tmp_path / "b").exists()


def test_a_checkpoint_named_on_the_command_line_must_exist(tmp_path):
    """A recipe's own checkpoint is trained first when missing (the README's main job); one named with --set that
    does not exist is a typo: refused, where it used to start training into the typo's folder."""
    from conftest import TINY_RECIPE, invoke

    typo = tmp_path / "rnus" / "model.pt"
    for cmd in (["export", TINY_RECIPE, "-o", tmp_path / "b"], ["eval", TINY_RECIPE]):
        r = invoke(*cmd, "--set", f"checkpoint={typo}")
        assert r.exit_code == 2 and r.output.strip().splitlines()[-1] == (
            f"error: --set checkpoint={typo}: no such file; leave it out to use {TINY_RECIPE}'s own checkpoint "
            "(none set)"), r.output
    assert sorted(os.listdir(tmp_path)) == []


def test_a_recipe_whose_normalisation_changed_since_training_is_refused(tiny_ckpt, tmp_path):
    """The checkpoint carries the normalisation it was trained with; a recipe edited since fed the model other pixels
    in eval and export without a word. Another input size is still allowed (measuring one is a use)."""
    from conftest import TINY_RECIPE, invoke

    for cmd in (["eval", TINY_RECIPE, "--limit", "10"], ["export", TINY_RECIPE, "-o", tmp_path / "b"]):
        r = invoke(*cmd, "--set", f"checkpoint={tiny_ckpt}", "--set", "data.mean=[0.5]", "--set", "data.std=[0.25]")
        assert r.exit_code == 2 and r.output.strip().splitlines()[-1] == (
            f"error: {TINY_RECIPE}: data.mean, data.std differ from what {tiny_ckpt} was trained with (mean [0.286] "
            "there, [0.5] here; std [0.353] there, [0.25] here): the model would see other pixels than it learnt on; "
            "use the values it was trained with, or retrain"), r.output
    r = invoke("eval", TINY_RECIPE, "--limit", "10", "--set", f"checkpoint={tiny_ckpt}", "--set", "data.input_size=32",
               "--json")
    assert r.exit_code == 0 and json.loads(r.output.strip().splitlines()[-1])["n"] == 10


def test_eval_of_a_recipe_scores_its_held_out_images_as_training_did(tmp_path):
    """A val_path without one of the classes: training scored it (classes matched by name), and `eval RECIPE` refused
    it unless told --allow-missing-classes; it now reproduces training's own top-1 on the same images."""
    import cv2
    import numpy as np
    from conftest import invoke

    rng = np.random.default_rng(0)

    def tree(root, classes, n):  # every image distinct: the export keeps its image sets apart by content
        for c in classes:
            (root / c).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(root / c / f"{i}.png"), rng.integers(0, 64, (28, 28), dtype=np.uint8) +
                            60 * "abcx".index(c))
        return root

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "folders", "model": {"name": "tiny_cnn", "args": {"width": 8}},
        "data": {"kind": "image_folder", "path": str(tree(tmp_path / "train", "abc", 6)),
                 "val_path": str(tree(tmp_path / "val", "bc", 3)), "input_size": 28, "channels": 1,
                 "mean": [0.5], "std": [0.5], "batch_size": 4},
        "train": {"epochs": 1, "lr": 0.05}}))
    r = invoke("train", recipe, "-o", tmp_path / "run")
    assert r.exit_code == 0, r.output
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    r = invoke("eval", recipe, "--set", f"checkpoint={tmp_path / 'run' / 'model.pt'}", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["n"] == trained["n"] == 6 and res["top1"] == pytest.approx(trained["top1"])
    # the export judges the same held-out images (it refused them too)
    r = invoke("export", recipe, "--set", f"checkpoint={tmp_path / 'run' / 'model.pt'}", "-o", tmp_path / "b",
               "--calib", tree(tmp_path / "cal", "x", 8), "--max-drop", "100", "--min-agreement", "0",
               "--corruptions", "none", "--qat-epochs", "0", "--target", "onnxruntime", "--prune", "0", "--no-distill")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "b" / "manifest.json").read_text())["summary"]
    assert s["evaluation"]["images"] + s["tune"]["images"] == 6  # split between tuning and evaluation
    assert s["evaluation"]["source"] == s["tune"]["source"] == str(tmp_path / "val")  # not data.path


def test_every_seed_is_checked_against_one_range_and_its_ends_run(tmp_path):
    """A negative seed crashed the export inside numpy, one past 64 bits crashed training inside torch; both are
    refused by field now, and the largest seed allowed trains and exports (each seeded step: split, calibration
    draw, distillation, QAT)."""
    from edgecv.export.calibration_set import load_calibration_set
    from edgecv.export.pipeline import export_bundle
    from edgecv.recipe import SEED_MAX
    from edgecv.train.loop import train

    for override in ("train.seed=-1", f"train.seed={SEED_MAX + 1}", "export.calib_seed=-3"):
        with pytest.raises(RecipeError, match=rf"{override.split('=')[0]}: must be >= 0 and <= {SEED_MAX}"):
            load_recipe(TINY_RECIPE, [override])
    cset = write(tmp_path, "samples: 64\nseed: -5\n")
    with pytest.raises(RecipeError, match=rf"{cset}: seed: must be >= 0"):
        load_calibration_set(cset)
    m = train(load_recipe(TINY_RECIPE, ["train.epochs=1", f"train.seed={SEED_MAX}"]), tmp_path / "run",
              show_progress=False)
    assert m["top1"] > 0.3
    bundle = export_bundle(str(TINY_RECIPE), str(tmp_path / "b"),
                           {"prune": 0.3, "distill": True, "qat_epochs": 1, "corruptions": "none"},
                           [f"checkpoint={tmp_path / 'run' / 'model.pt'}", f"export.calib_seed={SEED_MAX}",
                            "export.distill_epochs=1", "export.eval_limit=300"], show_progress=False)
    prune = bundle["summary"]["prune"]
    assert prune["top1_after_distill"] > 0.3 and prune["macs_after"] < prune["macs_before"]


def test_numbers_in_exponent_form_are_numbers_as_in_every_other_ml_config(tmp_path):
    """YAML 1.1 (PyYAML) reads ``1e-3`` as a string, so ``lr: 1e-3`` was refused as "expected float"; edgecv's
    files and ``--set`` read it as YAML 1.2 does. Quoted, it stays a string; yaml itself is left as it was."""
    p = write(tmp_path, "train:\n  lr: 1e-3\n  weight_decay: 5E-5\n  head_lr: .5e-2\nexport:\n  qat_lr: 2.5e-4\n")
    r = load_recipe(p, ["export.distill_lr=3e-2", "train.gamma=1e1"])
    assert (r.train.lr, r.train.weight_decay, r.train.head_lr, r.export.qat_lr) == (1e-3, 5e-5, 5e-3, 2.5e-4)
    assert (r.export.distill_lr, r.train.gamma) == (0.03, 10.0)
    with pytest.raises(RecipeError, match=r"train\.lr: expected float, got '1e-3'"):
        load_recipe(write(tmp_path, "train:\n  lr: '1e-3'\n"))
    assert yaml.safe_load("a: 1e-3") == {"a": "1e-3"}


@pytest.mark.parametrize("stage, overrides, field", [
    ("train", ["train.lr=1e6"], "train.lr"),
    ("distill", ["export.distill_lr=1e6", "export.distill_optimizer=sgd"], "export.distill_lr"),
])
def test_a_run_that_diverges_names_the_rate_to_lower_and_writes_no_bundle(tiny_ckpt, tmp_path, stage, overrides,
                                                                          field):
    """A loss that became NaN was an internal error ("FloatingPointError") that named train.lr even when
    distillation's rate was the one too high."""
    from conftest import invoke

    sets = [a for o in overrides for a in ("--set", o)]
    if stage == "train":
        r = invoke("train", TINY_RECIPE, "--set", "train.epochs=1", *sets, "-o", tmp_path / "run")
    else:
        r = invoke("export", TINY_RECIPE, "--int8", "--prune", "0.3", "--distill", "--corruptions", "none", *sets,
                   "--set", f"checkpoint={tiny_ckpt}", "--set", "export.eval_limit=300", "-o", tmp_path / "b")
        assert not (tmp_path / "b").exists()
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1].startswith(f"error: {stage}: the loss is nan at epoch 0 (it diverged); "
                                                        f"lower {field}")
