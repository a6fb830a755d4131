"""A bundle records the images that chose something in it (seen_images.txt: training, calibration, tune, QAT), and
`edgecv eval BUNDLE --data DATA` leaves them out of DATA and says how many: a number measured on the data that chose
it was reported before whenever DATA held them (the README's own `eval out/fashion --data fashion-mnist` judged the
export's 3,000 tune images along with the 7,000 it held out)."""
import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import FASHION, invoke, resign

from edgecv.bundle.reader import open_bundle
from edgecv.bundle.seen import KEY_HEX, parse_seen, read_seen, seen_key
from edgecv.data.fashion_mnist import CLASSES, load_fashion_mnist
from edgecv.data.loaders import hash_holdout
from edgecv.errors import BundleError
from edgecv.utils.io import sha256_array, sha256_file


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1].startswith("error:"), r.output
    for n in needles:
        assert n in r.output, (n, r.output)


@pytest.fixture(scope="module")
def folder_bundle(tmp_path_factory):
    """The tiny CNN trained on an ImageFolder tree of 300 Fashion-MNIST PNGs (30% held out by content hash), and
    its export: its training split, calibration and tune images are all files of that one folder."""
    tmp = tmp_path_factory.mktemp("seen")
    x, y = load_fashion_mnist(FASHION, "test")
    for c, name in enumerate(CLASSES):
        folder = tmp / "d" / name.replace("/", "_")
        folder.mkdir(parents=True)
        for k in np.where(y == c)[0][:30]:
            cv2.imwrite(str(folder / f"{k}.png"), x[k])
    recipe = tmp / "r.yaml"
    recipe.write_text(f"name: seen\nmodel: {{name: tiny_cnn, args: {{width: 8}}}}\n"
                      f"data: {{kind: image_folder, path: '{tmp / 'd'}', input_size: 28, channels: 1, mean: [0.5], "
                      "std: [0.25], holdout: 0.3, split: hash}\ntrain: {epochs: 1}\n"
                      "export: {calib_samples: 40, max_drop: 100.0, min_agreement: 0.0, corruptions: none}\n")
    assert invoke("train", recipe, "-o", tmp / "run").exit_code == 0
    r = invoke("export", recipe, "--int8", "--no-distill", "--set", f"checkpoint={tmp / 'run' / 'model.pt'}",
               "-o", tmp / "b", "--json")
    assert r.exit_code == 0, r.output
    return tmp, tmp / "b"


def _eval(bundle, data, *flags):
    r = invoke("eval", bundle, "--data", data, "--backend", "onnxruntime", "--json", *flags)
    assert r.exit_code == 0, r.output
    return json.loads(r.output.strip().splitlines()[-1])


def test_an_image_folder_export_records_its_training_calibration_and_tune_images(folder_bundle):
    tmp, bundle = folder_bundle
    m = json.loads((bundle / "manifest.json").read_text())
    s = m["summary"]
    files = sorted((tmp / "d").rglob("*.png"))
    keys = {seen_key(sha256_file(f)) for f in files}
    seen = read_seen(open_bundle(bundle))
    assert m["seen_images"] == "seen_images.txt" and seen <= keys  # every key is one of the folder's images
    by_use = s["seen_images"]["by_use"]
    assert by_use["calibration"] == 40 and by_use["tune"] == s["tune"]["images"]
    assert "qat" not in by_use  # the QAT rung did not run: its images chose nothing
    held_out = s["evaluation"]["images"] + s["tune"]["images"]
    assert by_use["training"] == len(files) - held_out  # the hash split's training images, each recorded
    assert len(seen) == s["seen_images"]["images"] == len(files) - s["evaluation"]["images"]


def test_eval_on_the_recipes_own_folder_judges_only_what_chose_nothing(folder_bundle):
    """On the folder the model was trained on, eval judges the export's evaluation split and nothing else: the
    same images, so the same top-1 the export reported for that artefact."""
    tmp, bundle = folder_bundle
    s = json.loads((bundle / "manifest.json").read_text())["summary"]
    n_files = len(list((tmp / "d").rglob("*.png")))
    res = _eval(bundle, tmp / "d")
    assert res["n"] == s["evaluation"]["images"] and res["left_out_seen"] == n_files - res["n"]
    m = json.loads((bundle / "manifest.json").read_text())
    art = next(a for a in m["artifacts"] if a["target"] == "onnxruntime" and a["file"] == res["artifact"])
    assert abs(res["top1"] - art["top1"]) <= 1 / res["n"] + 1e-9, (res, art)  # OpenCV's decode vs PIL's, at most one
    every = _eval(bundle, tmp / "d", "--include-seen")
    assert every["n"] == n_files and every["left_out_seen"] is None
    few = _eval(bundle, tmp / "d", "--limit", "20")  # seen images spread over give their place to others
    assert few["n"] == 20 and few["left_out_seen"] > 0


def test_a_folder_of_nothing_but_seen_images_is_refused_by_name(folder_bundle, tmp_path):
    tmp, bundle = folder_bundle
    seen = read_seen(open_bundle(bundle))
    for f in (tmp / "d").rglob("*.png"):
        if seen_key(sha256_file(f)) in seen:  # the same bytes under another name and folder
            (tmp_path / "copies" / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, tmp_path / "copies" / f.parent.name / f"renamed_{f.name}")
    _one_line_error(invoke("eval", bundle, "--data", tmp_path / "copies", "--allow-missing-classes"),
                    "every readable image is one the bundle was trained, calibrated or tuned on", "--include-seen")
    rep = invoke("eval", bundle, "--data", tmp / "d", "--corruptions", "gaussian_noise", "--severities", "1",
                 "--limit", "20", "--backend", "onnxruntime", "--json")
    assert rep.exit_code == 0, rep.output
    rep = json.loads(rep.output.strip().splitlines()[-1])
    assert rep["images"] == 20 and rep["left_out_seen"] > 0


def test_the_fashion_bundle_leaves_out_its_tune_images_from_the_test_split(tiny_bundle):
    """The tune split is drawn from Fashion-MNIST's test split, which is what `eval --data fashion-mnist` reads."""
    s = json.loads((tiny_bundle / "manifest.json").read_text())["summary"]
    x, _ = load_fashion_mnist(FASHION, "test")
    seen = read_seen(open_bundle(tiny_bundle))
    in_test = sum(seen_key(sha256_array(img)) in seen for img in x)
    assert in_test == s["tune"]["images"] > 0  # the calibration images are training images: not in the test split
    res = _eval(tiny_bundle, FASHION)
    assert res["left_out_seen"] == in_test and res["n"] == len(x) - in_test


def test_a_bundle_without_the_record_is_judged_unscreened_and_a_bad_record_is_refused(bundle_copy):
    def drop(m):
        m.pop("seen_images")
        m["files"].pop("seen_images.txt")
        (bundle_copy / "seen_images.txt").unlink()

    good = (bundle_copy / "seen_images.txt").read_text()
    with pytest.raises(BundleError, match=r"seen_images.txt: line 2: expected 16 lowercase hex digits"):
        parse_seen(good.splitlines()[0] + "\nnot-a-key\n", str(bundle_copy / "seen_images.txt"))
    (bundle_copy / "seen_images.txt").write_text(good + "X" * KEY_HEX + "\n")
    resign(bundle_copy)  # edited by hand, and re-checksummed: still refused, by line
    _one_line_error(invoke("eval", bundle_copy, "--data", FASHION, "--limit", "5"), "seen_images.txt: line")
    resign(bundle_copy, drop)  # exported before the record existed
    res = _eval(bundle_copy, FASHION, "--limit", "50")
    assert res["n"] == 50 and res["left_out_seen"] is None


def test_eval_of_a_recipe_on_a_folder_leaves_out_its_training_images(folder_bundle, tmp_path, caplog):
    """`eval RECIPE --data FOLDER` knows the recipe's training split: on its own folder it judges the held-out
    images only (as the recipe alone does), and a folder of nothing but training images is refused. So does `eval
    CHECKPOINT` in its run's folder, from the recipe.yaml training wrote there; a copy elsewhere cannot know."""
    tmp, bundle = folder_bundle
    recipe, ckpt = tmp / "r.yaml", tmp / "run" / "model.pt"
    n_files = len(list((tmp / "d").rglob("*.png")))
    held_out = json.loads(invoke("eval", recipe, "--set", f"checkpoint={ckpt}", "--json").output.splitlines()[-1])
    on_folder = json.loads(invoke("eval", recipe, "--set", f"checkpoint={ckpt}", "--data", tmp / "d",
                                  "--json").output.splitlines()[-1])
    assert on_folder["n"] == held_out["n"] and on_folder["left_out_training"] == n_files - held_out["n"]
    assert on_folder["top1"] == pytest.approx(held_out["top1"])  # the same images
    in_its_run = json.loads(invoke("eval", ckpt, "--data", tmp / "d", "--json").output.splitlines()[-1])
    assert in_its_run["left_out_training"] == on_folder["left_out_training"]  # the run's recipe.yaml beside it
    assert in_its_run["n"] == held_out["n"] and in_its_run["top1"] == pytest.approx(held_out["top1"])
    shutil.copy(ckpt, tmp_path / "model.pt")
    ckpt_alone = json.loads(invoke("eval", tmp_path / "model.pt", "--data", tmp / "d", "--json").output.splitlines()[-1])
    assert ckpt_alone["n"] == n_files and ckpt_alone["left_out_training"] is None  # a copy alone cannot know
    (tmp_path / "run2").mkdir()
    shutil.copy(ckpt, tmp_path / "run2" / "model.pt")
    (tmp_path / "run2" / "recipe.yaml").write_text("model: [not, a, recipe\n")  # damaged by hand: said, not used
    with caplog.at_level("WARNING", logger="edgecv.eval"):
        r = invoke("eval", tmp_path / "run2" / "model.pt", "--data", tmp / "d", "--json")
    assert r.exit_code == 0 and json.loads(r.output.splitlines()[-1])["left_out_training"] is None, r.output
    assert "recipe.yaml: not used to leave out" in caplog.text
    for f in (tmp / "d").rglob("*.png"):  # the training split alone (the recipe holds out 30% by content hash)
        if not hash_holdout(sha256_file(f), 0.3):
            (tmp_path / "t" / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, tmp_path / "t" / f.parent.name / f"copy_{f.name}")
    assert len(list((tmp_path / "t").rglob("*.png"))) == on_folder["left_out_training"]
    _one_line_error(invoke("eval", recipe, "--set", f"checkpoint={ckpt}", "--data", tmp_path / "t"),
                    "every image is one of", "training images")


@pytest.mark.parametrize("qat, recorded", [({}, False), ({"info": {"method": "blocks"}}, False),
                                           ({"info": {"method": "distill"}}, True)])
def test_the_qat_rungs_pooled_images_are_recorded_only_when_it_trained_on_them(tmp_path, qat, recorded):
    """Block-wise reconstruction fits on the calibration images: the pooled QAT images chose nothing then."""
    from types import SimpleNamespace

    from edgecv.export.image_sets import write_seen_images

    run = SimpleNamespace(seen={"calibration": ["a" * 64], "qat": ["b" * 64, "c" * 64]}, qat=qat, recipe=None,
                          tmp=tmp_path)
    by_use = write_seen_images(run)["by_use"]
    assert by_use["calibration"] == 1 and by_use.get("qat") == (2 if recorded else None)
