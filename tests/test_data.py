import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FASHION, ROOT, TINY_RECIPE

from edgecv.data.fashion_mnist import load_fashion_mnist
from edgecv.data.folders import list_image_folder, list_images, list_wnid_folder, read_classes_tsv
from edgecv.data.loaders import build_dataset, dataset_for_path
from edgecv.errors import DatasetError
from edgecv.recipe import DataConfig


def test_fashion_mnist_reader_real_files():
    x, y = load_fashion_mnist(FASHION, "train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [6000] * 10
    xt, yt = load_fashion_mnist(FASHION, "test")
    assert xt.shape == (10000, 28, 28) and np.bincount(yt).tolist() == [1000] * 10


def test_fashion_missing_folder_is_clear(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nope")


def test_wnid_folder_on_shared_images(imagenet_dir):
    names, wnids = read_classes_tsv(imagenet_dir / "classes.tsv")
    assert len(names) == 1000 and names[0] == "tench"
    images = list_wnid_folder(imagenet_dir)
    assert len(images) == 500 and not images.skipped
    labels = sorted(lbl for _, lbl in images.samples)
    assert labels == list(range(0, 1000, 2))  # one image per even class index
    path, label = images.samples[0]
    assert path.endswith("n01440764_tench.JPEG") and label == 0


def test_image_folder_and_corrupt_files_skipped(imagenet_dir, tmp_path, caplog):
    src = sorted(imagenet_dir.glob("*.JPEG"))[:6]
    for i, f in enumerate(src):
        d = tmp_path / ("a" if i < 3 else "b")
        d.mkdir(exist_ok=True)
        shutil.copy(f, d / f.name)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    data = src[0].read_bytes()
    (tmp_path / "b" / "truncated.jpg").write_bytes(data[:200])
    images = list_image_folder(tmp_path)
    assert images.classes == ["a", "b"]
    assert len(images) == 6 and len(images.skipped) == 2
    assert caplog.text.count("skipped 2 unreadable") == 1
    assert len(list_image_folder(tmp_path).skipped) == 2  # listed again (the held-out split): counted, said once
    assert caplog.text.count("skipped 2 unreadable") == 1
    ds = dataset_for_path(str(tmp_path), DataConfig(input_size=32, resize=36, channels=3))
    x, y = ds[0]
    assert tuple(x.shape) == (3, 32, 32) and y == 0


def test_empty_and_all_corrupt_folders_fail(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders|no readable"):
        list_image_folder(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="no readable images"):
        list_images(bad)
    # a file where a folder belongs said "image folder not found" of a file that is there
    for lister in (list_images, list_image_folder, list_wnid_folder):
        with pytest.raises(DatasetError, match=r"x.jpg: not a folder \(an image folder holds one sub-folder"):
            lister(bad / "x.jpg")


def test_holdout_split_is_disjoint(imagenet_dir):
    cfg = DataConfig(kind="wnid_folder", path=str(imagenet_dir), input_size=32, resize=36, holdout=0.2)
    tr, va = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(tr) == 400 and len(va) == 100
    assert not {p for p, _ in tr.samples} & {p for p, _ in va.samples}


def test_a_photo_stored_sideways_is_trained_upright_as_the_device_sees_it(tmp_path):
    """A phone stores a portrait photo landscape with EXIF Orientation 6. The device's runtime (OpenCV) turns it
    upright; training, the export's evaluation and explain (PIL) read it sideways until they turned it too."""
    from PIL import Image

    from edgecv.data.loaders import ImageFileDataset
    from edgecv.runtime.preprocess import load_image

    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :40] = 255  # 40 high, 80 wide, its left half white
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    (tmp_path / "a").mkdir()
    im.save(tmp_path / "a" / "portrait.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(stored).save(tmp_path / "a" / "plain.jpg", quality=95)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "plain.jpg", tmp_path / "b")
    ds = ImageFileDataset(list_images(tmp_path), 3)  # what training and the export's evaluation read
    i = [p for p, _ in ds.samples].index(str(tmp_path / "a" / "portrait.jpg"))
    trained = ds.load(i).permute(1, 2, 0).numpy().astype(int)
    on_device = load_image(str(tmp_path / "a" / "portrait.jpg"), 3)[..., ::-1].astype(int)  # OpenCV's BGR
    assert trained.shape == on_device.shape == (80, 40, 3)
    assert np.abs(trained - on_device).mean() < 2 and trained[:40].mean() > 200 and trained[40:].mean() < 50


@pytest.mark.parametrize("channels", [1, 3])
def test_a_16_bit_grey_image_is_trained_as_the_device_reads_it(tmp_path, channels):
    """A thermal or depth camera's 16-bit grey PNG: PIL's conversion to 8 bits saturated it (nearly all white) where
    OpenCV on the device keeps the top byte."""
    import cv2

    from edgecv.data.loaders import load_upright
    from edgecv.runtime.preprocess import load_image

    grey = (np.random.default_rng(0).random((30, 50)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "thermal.png"), grey)
    trained = load_upright(str(tmp_path / "thermal.png"), channels).numpy().astype(int)
    on_device = load_image(str(tmp_path / "thermal.png"), channels).astype(int)
    on_device = on_device[None] if channels == 1 else on_device[..., ::-1].transpose(2, 0, 1)
    assert trained.shape == on_device.shape and np.array_equal(trained, on_device)
    assert abs(trained.mean() - 127.5) < 5  # the top byte of uniform 16-bit values


def test_a_validation_folder_is_matched_to_the_training_classes_by_name(tmp_path):
    """A val_path lists its own classes: without 'a', its 'b' and 'c' were indices 0 and 1, so training scored them
    against the labels 'a' and 'b'. A class training never saw is an error that names it."""
    import cv2

    from edgecv.data.loaders import load_data

    def tree(root, classes, shade=0):
        for c in classes:
            (root / c).mkdir(parents=True)
            for i in range(2):
                cv2.imwrite(str(root / c / f"{i}.png"), np.full((8, 8, 3), 40 * i + 100 + shade, np.uint8))
        return root

    train, val = tree(tmp_path / "train", "abc"), tree(tmp_path / "val", "bc", shade=1)  # not copies of train's
    cfg = DataConfig(kind="image_folder", path=str(train), val_path=str(val), input_size=8, resize=8,
                     mean=[0.5] * 3, std=[0.5] * 3, batch_size=2)
    train_set, val_set, *_ = load_data(cfg)
    assert list(val_set.classes) == ["a", "b", "c"]
    assert sorted({(f.split("/")[-2], y) for f, y in val_set.samples}) == [("b", 1), ("c", 2)]
    tree(tmp_path / "val", "z")
    with pytest.raises(DatasetError, match=r"validation images\): classes do not match the training data's 3 labels "
                                           r"\(3 in the data\): 1 data class\(es\) not among the labels: 'z'"):
        load_data(cfg)


@pytest.mark.parametrize("name", [b"caf\xe9", b"a\nb", b"tab\there"])
def test_a_class_folder_name_labels_txt_cannot_hold_is_refused_before_training(tmp_path, name):
    """A class name goes into labels.txt (a line each), the manifest and the reports: a folder name that was not
    UTF-8 trained for the whole run, then crashed drawing the confusion chart; one with a newline split a label."""
    import os

    import cv2

    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()  # OpenCV cannot open such a path
    for c in (b"ok", name):
        folder = os.path.join(os.fsencode(tmp_path), c)
        os.mkdir(folder)
        with open(os.path.join(folder, b"0.png"), "wb") as f:
            f.write(png)
    with pytest.raises(DatasetError, match=rf"class folder {re.escape(repr(name))} is not a printable UTF-8 name"):
        list_images(tmp_path)


def test_training_without_held_out_images_is_refused(tmp_path):
    """An image folder with data.holdout 0 and no validation folder validated on its own training images and printed
    that top-1 as the run's result (13 photographs: 1.0000)."""
    import cv2

    from edgecv.data.loaders import load_data

    for c in "ab":
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(tmp_path / "d" / c / f"{i}.png"), np.full((8, 8, 3), 30 * i, np.uint8))
    cfg = DataConfig(kind="image_folder", path=str(tmp_path / "d"), input_size=8, resize=8, mean=[0.5] * 3,
                     std=[0.5] * 3, batch_size=2)
    with pytest.raises(DatasetError, match=r"no held-out images \(data.holdout is 0, no data.val_path, no val/ folder"):
        load_data(cfg)
    cfg.holdout = 0.5
    train_set, val_set, *_ = load_data(cfg)
    assert not {f for f, _ in train_set.samples} & {f for f, _ in val_set.samples}


def test_the_held_out_split_does_not_move_with_the_seeds(tmp_path):
    """Training held out images with train.seed and the export with export.calib_seed: a recipe trained with seed 3
    was judged by its export on images it had trained on. The split is now the data's own."""
    import cv2

    from edgecv.data.loaders import load_data
    from edgecv.export.data import evaluation_images

    for c in "ab":
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(10):
            cv2.imwrite(str(tmp_path / "d" / c / f"{i}.png"), np.full((8, 8, 3), 20 * i + (c == "b"), np.uint8))
    cfg = DataConfig(kind="image_folder", path=str(tmp_path / "d"), input_size=8, resize=8, mean=[0.5] * 3,
                     std=[0.5] * 3, batch_size=2, holdout=0.3, split="index")
    trained_on = {f for f, _ in load_data(cfg, seed=3)[0].samples}
    held = [{f for f, _ in load_data(cfg, seed=s)[1].samples} for s in (0, 3, 7)]
    judged = set(evaluation_images(cfg, None, None, show_progress=False).paths)
    assert held[0] == held[1] == held[2] == judged and len(judged) == 6 and not judged & trained_on


def test_held_out_copies_of_training_images_are_left_out_of_every_score(tmp_path):
    """Scraped folders hold the same photograph under other names. An index split or a separate validation folder
    scored the model on those copies of its training images; they are now left out (the training metrics and the
    export's manifest count them), and a held-out set made only of copies is refused."""
    import shutil

    import cv2

    from edgecv.data.loaders import content_hash, load_data
    from edgecv.export.data import evaluation_images

    rng = np.random.default_rng(0)
    for c in "ab":
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(10):
            cv2.imwrite(str(tmp_path / "d" / c / f"{i}.png"), rng.integers(0, 255, (8, 8, 3), np.uint8))
        for i in range(3):  # the same photographs again, renamed
            shutil.copy(tmp_path / "d" / c / f"{i}.png", tmp_path / "d" / c / f"copy{i}.png")
    cfg = DataConfig(kind="image_folder", path=str(tmp_path / "d"), input_size=8, resize=8, mean=[0.5] * 3,
                     std=[0.5] * 3, batch_size=2, holdout=0.4, split="index")
    train_set, val_set, *_ = load_data(cfg)
    trained = {content_hash(f) for f, _ in train_set.samples}
    assert val_set.list.training_copies > 0 and not {content_hash(f) for f, _ in val_set.samples} & trained
    assert len(val_set) + val_set.list.training_copies == round(26 * 0.4)  # the index split's 10, less the copies
    ev = evaluation_images(cfg, None, None, show_progress=False)
    assert ev.training_copies == val_set.list.training_copies and len(ev) == len(val_set)

    # a folder named by the export's --eval is screened against the recipe's training images too
    shutil.copytree(tmp_path / "d", tmp_path / "v")
    ev = evaluation_images(cfg, str(tmp_path / "v"), None, show_progress=False)
    files = sorted((tmp_path / "v").rglob("*.png"))
    assert not set(ev.ids) & trained and len(ev) + ev.training_copies == len(files)
    assert ev.training_copies == sum(content_hash(str(f)) in trained for f in files) > 0

    # train/ and val/ folders: data.holdout and data.split do not apply, so the copies are screened out all the same
    shutil.copytree(tmp_path / "d", tmp_path / "tv" / "train")
    shutil.copytree(tmp_path / "d", tmp_path / "tv" / "val")
    (tmp_path / "tv" / "val" / "a" / "new.png").write_bytes(cv2.imencode(".png", np.full((8, 8, 3), 7, np.uint8))[1])
    tv = DataConfig(kind="image_folder", path=str(tmp_path / "tv"), input_size=8, resize=8, mean=[0.5] * 3,
                    std=[0.5] * 3, batch_size=2, holdout=0.3, split="hash")
    assert [f for f, _ in load_data(tv)[1].samples] == [str(tmp_path / "tv" / "val" / "a" / "new.png")]

    # a validation folder of renamed copies of training images only
    cfg = DataConfig(kind="image_folder", path=str(tmp_path / "d"), val_path=str(tmp_path / "v"), input_size=8,
                     resize=8, mean=[0.5] * 3, std=[0.5] * 3, batch_size=2)
    with pytest.raises(DatasetError, match=r"every held-out image is a copy of a training image"):
        load_data(cfg)


def test_a_photograph_held_out_twice_never_sits_in_both_tune_and_evaluation():
    """Two names, the same bytes, both held out: the tune split could take one and the evaluation split the other,
    and the manifest then said disjoint_from_tune: false while the evaluation judged what the tune images chose."""
    from edgecv.export.data import ArraySet, split_off

    ids = [f"id{i % 40}" for i in range(100)]  # 40 photographs, most held out two or three times
    s = ArraySet(np.zeros((100, 1, 2, 2), np.float32), np.arange(100) % 3, [], "held-out", ids)
    tune, ev = split_off(s, 0.3, seed=0)
    assert len(tune) == 30 and len(ev) > 0 and not set(tune.ids) & set(ev.ids)
    assert set(tune.ids) | set(ev.ids) == set(ids)  # a photograph only in the evaluation split stays there
    with pytest.raises(DatasetError, match="every held-out image left after the tune split is a copy"):
        split_off(ArraySet(np.zeros((4, 1, 2, 2), np.float32), np.zeros(4), [], "held-out", ["same"] * 4), 0.3)


def test_a_recipe_that_holds_nothing_out_is_still_judged_on_its_whole_folder(imagenet_dir):
    """The ImageNet recipe (a pretrained network, never trained here) names one folder and holds nothing out: it has
    no training split, so nothing is left out of its held-out images as training copies; training on it stays
    refused."""
    from edgecv.data.loaders import build_dataset, load_data, training_identities
    from edgecv.recipe import load_recipe

    cfg = load_recipe(ROOT / "recipes" / "efficientnet_lite0_imagenet.yaml", [f"data.path={imagenet_dir}"]).data
    assert len(build_dataset(cfg, "val")) == 500 and training_identities(cfg) == set()
    with pytest.raises(DatasetError, match="no held-out images"):
        load_data(cfg)


def test_val_limit_judges_n_held_out_images_spread_over_the_classes():
    """data.val_limit: each epoch, `eval RECIPE` and the export's held-out pool judge N held-out images, spread over
    them (a folder lists its images class by class)."""
    from edgecv.recipe import load_recipe

    cfg = load_recipe(TINY_RECIPE, ["data.val_limit=100"]).data
    ds = build_dataset(cfg, "val")
    assert len(ds) == 100 and np.bincount(ds.labels.numpy(), minlength=10).min() >= 5
    assert len(build_dataset(load_recipe(TINY_RECIPE, ["data.val_limit=null"]).data, "val")) == 10000
    assert len(build_dataset(load_recipe(TINY_RECIPE, ["data.val_limit=20000"]).data, "val")) == 10000  # all there are


def test_unreadable_images_say_why_in_the_same_words_when_listed_and_when_loaded(tmp_path):
    """Listing a training folder and loading an image (training, explain) name the same reason, without the path;
    a FIFO named like an image is refused, not opened (PIL would wait for a writer for ever)."""
    import cv2

    from edgecv.data.loaders import UnreadableImage, load_upright

    d = tmp_path / "a"
    d.mkdir()
    cv2.imwrite(str(d / "good.png"), np.full((8, 8, 3), 7, np.uint8))
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.png").write_text("not an image")
    want = {"empty.jpg": "empty file", "text.png": "not an image PIL can decode"}
    assert {Path(p).name: why for p, why in list_image_folder(tmp_path).skipped} == want
    for name, why in want.items():
        with pytest.raises(UnreadableImage, match=f"^{why}$"):
            load_upright(str(d / name), 3)
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(UnreadableImage, match="device, pipe or socket"):
        load_upright(str(tmp_path / "pipe.jpg"), 3)
    assert load_upright(str(d / "good.png"), 3).shape == (3, 8, 8)
