import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import ROOT

from edgecv.train.explain import explain_images


def test_gradcam_png_and_deletion_check(imagenet_dir, tmp_path):
    imgs = [str(p) for p in sorted(imagenet_dir.glob("*.JPEG"))[:3]]
    res = explain_images(str(ROOT / "recipes" / "efficientnet_lite0_imagenet.yaml"), imgs, str(tmp_path),
                         method="gradcam", topk=3, check=True)
    assert len(res["images"]) == 3
    for r in res["images"]:
        png = Path(r["png"])
        assert png.exists() and png.stat().st_size > 10_000
        assert 0 <= r["score_top_deleted"] <= 1 and r["drop_top"] == pytest.approx(r["score"] - r["score_top_deleted"], abs=1e-6)
    assert res["images"][0]["label"] == "tench"
    assert res["random_unit"] == "cam" and res["cam_grid"] == [7, 7]
    assert 0 <= res["deletion_pass_rate"] <= 1


def test_deletion_check_tells_the_cam_from_its_inverse(imagenet_dir):
    """The check can fail: deleting the CAM's *least* highlighted 20% must not beat random deletions."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from edgecv.data.loaders import load_upright
    from edgecv.data.transforms import eval_transform
    from edgecv.train.explain import default_target_layer, deletion_check, feature_grid
    from edgecv.train.sources import load_source

    src = load_source(str(ROOT / "recipes" / "efficientnet_lite0_imagenet.yaml"))
    model, cfg = src.model.eval(), src.data
    layer = default_target_layer(model, 224, 3)
    grid = feature_grid(model, layer, 224, 3)
    assert grid == (7, 7)
    tf = eval_transform(cfg)
    real, inverse = [], []
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for i, p in enumerate(sorted(imagenet_dir.glob("*.JPEG"))[:6]):
            x = tf(load_upright(str(p), 3))
            with torch.no_grad():
                cls = int(model(x[None]).argmax())
            heat = cam(input_tensor=x[None], targets=[ClassifierOutputTarget(cls)])[0]
            real.append(deletion_check(model, x, heat, cls, seed=i, grid=grid))
            inverse.append(deletion_check(model, x, 1 - heat, cls, seed=i, grid=grid))
    assert sum(r["deletion_ok"] for r in real) >= 5
    assert sum(r["deletion_ok"] for r in inverse) <= 1
    assert all(r["drop_top"] > q["drop_top"] for r, q in zip(real, inverse))


def test_explain_never_overwrites_its_own_heatmaps(tiny_ckpt, tmp_path):
    from test_bad_input import CLASSES, _tree, invoke, one_line_error

    d = _tree(tmp_path / "d", CLASSES[:2], per_class=1)
    a, b = sorted(d.rglob("*.png"))
    shutil.copy(a, d / CLASSES[1] / a.name)  # the same file name in two class folders
    r = invoke("explain", tiny_ckpt, d, tmp_path / "missing.png", "-o", tmp_path / "x")
    one_line_error(r, 2, "missing.png: no such image file or folder")
    os.mkfifo(tmp_path / "pipe.png")  # opened, it would block until a writer came
    for special in (tmp_path / "pipe.png", "/dev/zero"):
        one_line_error(invoke("explain", tiny_ckpt, special, "-o", tmp_path / "x"), 2,
                       f"{special}: not an image file or folder (a device, pipe, socket or broken link)")
    (tmp_path / "garbage.png").write_bytes(b"not a png")
    one_line_error(invoke("explain", tiny_ckpt, tmp_path / "garbage.png", "-o", tmp_path / "x"), 2,
                   "no image could be explained")
    assert not (tmp_path / "x").exists()  # refused without leaving an empty -o folder behind
    r = invoke("explain", tiny_ckpt, d, "-o", tmp_path / "x", "--json")
    pngs = [row["png"] for row in json.loads(r.output)["images"]]
    assert len(pngs) == 3 and len(set(pngs)) == 3 and len(os.listdir(tmp_path / "x")) == 3


def test_a_folder_is_every_image_below_it_and_a_one_colour_image_is_undecided(tiny_ckpt, tmp_path):
    """A folder with loose photographs beside one sub-folder was read as a labelled tree of one class: the loose
    ones were left out in silence. A link back to the folder is not followed. On a one-colour image neither
    deletion moves the score, so the check cannot judge it: undecided, and out of the pass rate (it had counted
    as a pass or a fail by rounding noise)."""
    import cv2
    import numpy as np
    from test_bad_input import CLASSES, _tree, invoke

    d = _tree(tmp_path / "d", CLASSES[1:2], per_class=2)
    shutil.copy(sorted(d.rglob("*.png"))[0], d / "loose.png")
    cv2.imwrite(str(d / "flat.png"), np.full((28, 28), 128, np.uint8))
    os.symlink(".", d / "again")
    os.mkfifo(d / "pipe.png")  # inside a folder: PIL opened it and waited for a writer for ever
    (d / "empty.jpg").write_bytes(b"")
    r = invoke("explain", tiny_ckpt, d, "-o", tmp_path / "x", "--check", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert {os.path.basename(i["image"]): i["error"] for i in res["skipped"]} == {
        "pipe.png": "a device, pipe or socket", "empty.jpg": "empty file"}
    got = sorted(os.path.relpath(i["image"], d) for i in res["images"])
    assert got == sorted(["flat.png", "loose.png"] + [os.path.relpath(p, d) for p in (d / CLASSES[1]).glob("*.png")])
    flat = next(i for i in res["images"] if i["image"].endswith("flat.png"))
    assert flat["deletion_ok"] is None and flat["undecided"]
    judged = [i["deletion_ok"] for i in res["images"] if i["deletion_ok"] is not None]
    assert res["deletion_judged"] == len(judged) == 3 and res["deletion_undecided"] == 1
    assert res["deletion_pass_rate"] == pytest.approx(sum(judged) / 3)
    r = invoke("explain", tiny_ckpt, d, "-o", tmp_path / "y", "--check")
    assert r.exit_code == 0 and "of 3 images (1 undecided" in r.output, r.output


def test_a_labelled_tree_says_which_loose_images_it_leaves_out(tmp_path, caplog):
    from test_bad_input import CLASSES, _tree

    from edgecv.data.folders import list_images

    d = _tree(tmp_path / "d", CLASSES[1:3], per_class=2)
    shutil.copy(sorted(d.rglob("*.png"))[0], d / "loose.png")
    with caplog.at_level("WARNING", logger="edgecv.data"):
        images = list_images(d)
    assert len(images.samples) == 4 and images.classes == sorted(CLASSES[1:3])
    assert "1 image(s) outside the class folders left out (loose.png)" in caplog.text
