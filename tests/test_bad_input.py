"""Bad input ends in one line naming the file, key or flag (exit 2), or a correct result: never a traceback,
a crash or a silent wrong answer. One test per class of input (issue 11's findings and more cases of each)."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import FASHION, ROOT, TINY_RECIPE, resign

from edgecv.bundle.reader import open_bundle
from edgecv.data.fashion_mnist import CLASSES, load_fashion_mnist
from edgecv.data.folders import read_classes_tsv
from edgecv.errors import DatasetError

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli():
    from edgecv.cli import cli as group

    return group


def invoke(*args):
    r = CliRunner().invoke(cli(), [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), (args, repr(r.exception))
    return r


def one_line_error(r, code=2, *needles):
    assert r.exit_code == code, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("error:") or "Error: Invalid value" in r.output, r.output
    for n in needles:
        assert n in r.output, (n, r.output)




# -- recipes and flags -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("content,overrides,needle", [
    (b"", [], "the recipe is empty"),
    (b"# only a comment\n", [], "the recipe is empty"),
    (bytes(range(256)) * 4, [], "not UTF-8"),
    (b"- a list\n", [], "expected a mapping"),
    (b"model: [unclosed\n", [], "not valid YAML"),
    (None, ["train.lr=[1,"], "--set 'train.lr=[1,'"),
    (None, ["data.batch_size=0"], "data.batch_size: must be >= 1"),
    (None, ["train.lr=-1"], "train.lr: must be > 0"),
    (None, ["data.input_size=0"], "data.input_size: must be >= 1"),
    (None, ["train.epochs=-3"], "train.epochs: must be >= 1"),
    (None, ["train.threads=100000"], "train.threads: must be >= 1 and <= 256"),
    (None, ["train.warmup_epochs=100"], "train.warmup_epochs: 100 is more than train.epochs"),
    (None, ["data.workers=10000"], "data.workers: must be >= 0 and <= 256"),
    (None, ["train.lr=.inf"], "train.lr: must be finite and > 0, got inf"),
    (None, ["export.temperature=.nan"], "export.temperature: must be finite and > 0, got nan"),
    (None, ["train.weight_decay=-1e-4"], "train.weight_decay: must be >= 0, got -0.0001"),  # read as a number
    (None, ["data.holdout=1.5"], "data.holdout"),
    (None, ["data.std=[0]"], "data.std: every value must be > 0"),
    (None, ["data.resize=8"], "data.resize: 8 is smaller than data.input_size"),
    (None, ["export.opset=7"], "export.opset"),
    (None, ["export.prune_method=biggest"], "export.prune_method"),
    (None, ["export.weight_rounding=stochastic"], "export.weight_rounding"),
    (None, ["train"], "expected key=value"),
    (None, ["train..lr=1"], "empty key part"),
    # aliases: a line that stands for 9**7 values (a regression costs seconds, not the host), or a recipe in itself
    (b"name: x\nmodel: {name: tiny_cnn, args: {junk: [&a [1,1,1,1,1,1,1,1,1]" + b"".join(
        b", &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]" % ((c,) + (c - 1,) * 9) for c in b"bcdefg") + b"]}}\n",
     [], "the YAML's aliases (&/*) expand it past 100,000 values"),
    (b"name: x\nmodel: &m {name: tiny_cnn, args: {me: *m}}\n", [], "the YAML refers to itself through an alias"),
    (b"name: x\nmodel: {name: tiny_cnn, args: {junk: " + b"[" * 3000 + b"]" * 3000 + b"}}\n", [],
     "the YAML is nested too deeply"),
    (None, ["model.args.junk=[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,"
            "*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]"], "expand it past 100,000"),
])
def test_bad_recipes_and_overrides(content, overrides, needle, tmp_path):
    path = tmp_path / "r.yaml"
    if content is None:
        shutil.copy(TINY_RECIPE, path)
    else:
        path.write_bytes(content)
    args = ["train", path, "-o", tmp_path / "run"]
    for o in overrides:
        args += ["--set", o]
    one_line_error(invoke(*args), 2, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,needle", [
    (["bench", "{b}", "--batch", "-1"], "--batch"), (["bench", "{b}", "--batch", "abc"], "--batch"),
    (["bench", "{b}", "--batch", "1,,0"], "--batch"), (["bench", "{b}", "--iters", "0"], "--iters"),
    (["profile", "{b}", "--iters", "0"], "--iters"), (["profile", "{b}", "--batch", "-2"], "--batch"),
    (["profile", "{b}", "-o", "{file}"], "exists and is not a directory"), (["run", "{b}", "--source", "x", "--topk", "0"], "--topk"),
    (["run", "{b}", "--source", "x", "--open-timeout", "0"], "--open-timeout"),
    (["run", "{b}", "--source", "x", "--max-failures", "-1"], "--max-failures"),
    # 100,000 ONNX Runtime threads took 16 GB and ignored SIGTERM: every thread count has one ceiling
    (["bench", "{b}", "--threads", "100000"], "--threads': 100000 is not in the range 1<=x<=256"),
    (["profile", "{b}", "--threads", "257"], "--threads"), (["run", "{b}", "--source", "x", "--threads", "257"], "--threads"),
    (["run", "{b}", "--source", "x", "--decode-threads", "999"], "--decode-threads"),
    (["run", "{b}", "--source", "x", "--infer-workers", "999"], "--infer-workers"),
    (["eval", "{b}", "--data", "x", "--limit", "0"], "--limit"),
    (["export", "{ckpt}", "-o", "{tmp}/o", "--prune", "1.5"], "--prune"),
    (["export", "{ckpt}", "-o", "{tmp}/o", "--max-drop", "-1"], "--max-drop"),
    (["export", "{ckpt}", "-o", "{tmp}/o", "--calib-samples", "0"], "--calib-samples"),
    (["export", "{ckpt}", "-o", "{tmp}/o", "--prune-method", "bogus"], "--prune-method"),
    # the tiny CNN has no inverted-residual blocks: refused at the prune stage, nothing written
    (["export", "{ckpt}", "-o", "{tmp}/o", "--prune", "0.3", "--prune-method", "reconstruct", "--calib", str(FASHION),
      "--eval", str(FASHION), "--corruptions", "none"], "no inverted-residual blocks"),
])
def test_bad_flags_are_one_line(args, needle, tiny_bundle, tiny_ckpt, tmp_path):
    (tmp_path / "file").write_text("x")
    subs = {"{b}": str(tiny_bundle), "{file}": str(tmp_path / "file"), "{ckpt}": str(tiny_ckpt), "{tmp}": str(tmp_path)}
    args = [a.format(b=subs["{b}"], file=subs["{file}"], ckpt=subs["{ckpt}"], tmp=subs["{tmp}"]) for a in args]
    r = invoke(*args)
    assert r.exit_code == 2 and needle in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_export_into_cwd_or_user_folder_is_refused(tiny_ckpt, tmp_path, monkeypatch):
    (tmp_path / "thesis.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path), ".."):
        r = invoke("export", tiny_ckpt, "-o", out, "--calib", FASHION, "--eval", FASHION)
        one_line_error(r, 2)
    run_dir = tiny_ckpt.parent  # the checkpoint's own run directory
    before = sorted(os.listdir(run_dir))
    one_line_error(invoke("export", tiny_ckpt, "-o", run_dir, "--calib", FASHION, "--eval", FASHION), 2,
                   "not an edgecv bundle")
    assert sorted(os.listdir(run_dir)) == before and (tmp_path / "thesis.txt").read_text() == "mine"


def test_relative_paths_in_a_recipe_name_the_working_directory(tmp_path, monkeypatch):
    """Recipes name their data and calibration sets relative to the working directory (the project root); run from
    elsewhere, the error says where they were looked for, and an absolute path gets no such hint."""
    monkeypatch.chdir(tmp_path)
    where = f"(relative to the working directory {tmp_path})"
    one_line_error(invoke("export", ROOT / "recipes" / "fashion_mnist.yaml", "--int8", "-o", "o"), 2,
                   f"calibration/fashion_mnist_train.yaml: calibration set file not found {where}")
    one_line_error(invoke("train", ROOT / "recipes" / "transfer_lite0_caltech101.yaml", "-o", "r"), 2,
                   f"../shared/data/caltech101: image folder not found {where}")
    one_line_error(invoke("train", ROOT / "recipes" / "fashion_mnist.yaml", "-o", "r", "--set", "data.path=fm"), 2,
                   f"fm: Fashion-MNIST folder not found {where}")
    r = invoke("train", ROOT / "recipes" / "fashion_mnist.yaml", "-o", "r", "--set", f"data.path={tmp_path / 'fm'}")
    one_line_error(r, 2, f"{tmp_path / 'fm'}: Fashion-MNIST folder not found (install")
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


# -- checkpoints and models --------------------------------------------------------------------------------------

@pytest.mark.parametrize("drop,needle", [("classes", "'classes' is missing"), ("state_dict", "'state_dict' is missing"),
                                         ("arch", "'arch' is missing")])
def test_damaged_checkpoint_is_named(drop, needle, tiny_ckpt, tmp_path):
    ck = torch.load(tiny_ckpt, weights_only=True)
    del ck[drop]
    bad = tmp_path / "bad.pt"
    torch.save(ck, bad)
    one_line_error(invoke("eval", bad, "--data", FASHION, "--limit", "10"), 2, needle, str(bad))
    one_line_error(invoke("export", bad, "-o", tmp_path / "o", "--calib", FASHION, "--eval", FASHION), 2, needle)


def test_truncated_bare_onnx_and_wrong_files(tiny_bundle, tmp_path):
    t = tmp_path / "m.onnx"
    t.write_bytes((tiny_bundle / "model_fp32.onnx").read_bytes()[:700])
    for cmd in (["bench", t, "--iters", "2"], ["profile", t, "--iters", "2"]):
        one_line_error(invoke(*cmd), 2, "not a loadable ONNX model", str(t))
    (tmp_path / "notes.txt").write_text("x")
    one_line_error(invoke("bench", tmp_path / "notes.txt"), 2, "not a bundle directory or an .onnx file")
    one_line_error(invoke("bench", tmp_path / "missing.onnx"), 2, "no such bundle directory")


def _onnx(path, size, classes):
    from edgecv.models.registry import create_model

    m = create_model("tiny_cnn", num_classes=classes, width=8).eval()
    torch.onnx.export(m, torch.zeros(1, 1, size, size), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)


@pytest.mark.parametrize("case", ["truncated", "input_shape", "classes"])
def test_check_loads_models_and_matches_their_io(case, bundle_copy, tmp_path):
    """A re-checksummed bundle whose int8 model is damaged passed `check` before. (The int8 artefact by name:
    which artefact is the default is the speed gate's race on the tiny model.)"""
    name = open_bundle(bundle_copy).artifact("onnxruntime", "int8")["file"]
    target = bundle_copy / name
    if case == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        _onnx(target, 32 if case == "input_shape" else 28, 7 if case == "classes" else 10)
    resign(bundle_copy)
    r = invoke("check", bundle_copy)
    needle = {"truncated": "not a valid ONNX model", "input_shape": "input shape", "classes": "7 outputs"}[case]
    assert r.exit_code == 1 and name in r.output and needle in r.output, r.output
    one_line_error(invoke("eval", bundle_copy, "--backend", "onnxruntime", "--precision", "int8", "--data", FASHION,
                          "--limit", "10"), 2, name)


def test_preprocess_and_labels_are_validated(bundle_copy):
    (bundle_copy / "preprocess.json").write_text("not json")
    resign(bundle_copy)
    one_line_error(invoke("eval", bundle_copy, "--data", FASHION, "--limit", "5"), 2, "preprocess.json: not valid JSON")
    assert invoke("check", bundle_copy).exit_code == 1
    (bundle_copy / "preprocess.json").write_text(json.dumps({"input_size": 28, "channels": 1, "mean": [0.5],
                                                             "std": [0.0]}))
    resign(bundle_copy)
    one_line_error(invoke("eval", bundle_copy, "--data", FASHION, "--limit", "5"), 2, "std: every value must be > 0")
    (bundle_copy / "labels.txt").write_bytes("Caf\xe9\n".encode("latin-1") * 10)
    resign(bundle_copy)
    one_line_error(invoke("eval", bundle_copy, "--data", FASHION, "--limit", "5"), 2, "labels.txt: not UTF-8")



# -- evaluation data and classes ------------------------------------------------------------------------------

def _tree(root, names, per_class=8, source_for=None):
    x, y = load_fashion_mnist(FASHION, "test")
    for i, name in enumerate(names):
        d = root / name.replace("/", "_")
        d.mkdir(parents=True)
        src = source_for(i) if source_for else i
        for k in np.where(y == src)[0][:per_class]:
            cv2.imwrite(str(d / f"{k}.png"), x[k])
    return root


def test_training_on_one_class_or_a_class_without_images_is_refused(tmp_path):
    """One class folder trained a 'classifier' that reported top-1 1.0000: every answer is that class. A class
    folder whose only file cannot be read trained a model with an output no image ever taught."""
    d = _tree(tmp_path / "d", ["Bag"], per_class=12)
    recipe = tmp_path / "one.yaml"
    recipe.write_text(f"name: one\nmodel: {{name: tiny_cnn, args: {{width: 8}}}}\n"
                      f"data: {{kind: image_folder, path: '{d}', input_size: 28, channels: 1, mean: [0.5], std: [0.25],"
                      f" holdout: 0.25}}\ntrain: {{epochs: 1}}\n")
    one_line_error(invoke("train", recipe, "-o", tmp_path / "run"), 2,
                   "1 class(es) ['Bag']; a classifier needs at least 2")
    assert not (tmp_path / "run").exists()
    _tree(tmp_path / "d", ["Coat", "Dress"], per_class=12, source_for=lambda i: i + 3)
    (tmp_path / "d" / "Coat" / "only.png").write_bytes(b"")  # now Coat holds one image...
    for f in (tmp_path / "d" / "Coat").glob("[0-9]*.png"):
        f.unlink()  # ...and it cannot be read
    one_line_error(invoke("train", recipe, "-o", tmp_path / "run"), 2,
                   "class folder(s) 'Coat' hold no readable training image")
    assert not (tmp_path / "run").exists()


def test_a_limited_evaluation_spreads_over_the_classes(tiny_bundle, tiny_ckpt, tmp_path):
    """A folder lists its images class by class: --limit 10 judged the first 10 images, all of one class (as did
    export.eval_limit, and the robustness report its first 100 evaluation images). They are spread evenly now."""
    from edgecv.evaluate.bundle import LabelledImages
    from edgecv.utils.sampling import evenly_spaced

    assert evenly_spaced(812, 100)[:3] == [0, 8, 16] and evenly_spaced(812, 100)[-1] == 811
    assert evenly_spaced(5, 10) == [0, 1, 2, 3, 4] and evenly_spaced(7, 1) == [0] and len(set(evenly_spaced(9, 8))) == 8
    d = _tree(tmp_path / "d", CLASSES, per_class=8)
    frames = LabelledImages(str(d), 1, limit=10)
    assert frames.n == 10 and sorted(label for _, label, _ in frames) == list(range(10))
    for target in (tiny_bundle, tiny_ckpt):
        r = invoke("eval", target, "--data", d, "--limit", "10", "--json")
        assert r.exit_code == 0 and json.loads(r.output)["n"] == 10, r.output
    from edgecv.export.data import evaluation_images
    from edgecv.recipe import DataConfig

    ev = evaluation_images(DataConfig(kind="image_folder", input_size=28, channels=1, mean=[0.5], std=[0.25]),
                           str(d), 10, show_progress=False)  # export.eval_limit
    assert sorted(ev.y.tolist()) == list(range(10)) and list(ev.paths) == sorted(ev.paths)
    from edgecv.data.loaders import build_dataset

    train = build_dataset(DataConfig(kind="image_folder", path=str(d), input_size=28, channels=1, mean=[0.5],
                                     std=[0.25], holdout=0.0, train_limit=10), "train")  # data.train_limit
    assert sorted(label for _, label in train.list.samples) == list(range(10))


def test_eval_classes_must_match_the_labels(tiny_bundle, tiny_ckpt, tmp_path):
    other = _tree(tmp_path / "other", ["cat", "dog", "bird"])
    more = _tree(tmp_path / "more", CLASSES + ["Extra"])
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in list((other / "cat").iterdir())[:3]:
        shutil.copy(f, flat / f.name)
    for target in (tiny_bundle, tiny_ckpt):
        one_line_error(invoke("eval", target, "--data", other), 2, "'cat'", "missing from the data")
        one_line_error(invoke("eval", target, "--data", more), 2, "'Extra'", "not among the labels")
        one_line_error(invoke("eval", target, "--data", flat), 2, "no class labels")
    subset = _tree(tmp_path / "subset", CLASSES[:3])
    one_line_error(invoke("eval", tiny_bundle, "--data", subset), 2, "7 of the labels missing", "--allow-missing-classes judges")
    assert invoke("eval", tiny_bundle, "--data", subset, "--allow-missing-classes").exit_code == 0


def test_folders_in_another_order_are_scored_by_name(tiny_bundle, tiny_ckpt, tmp_path):
    """Folder names sort differently from the label order: labels are mapped by name, so the score equals the
    one with the class indices as they are."""
    named = _tree(tmp_path / "named", CLASSES)  # 'Ankle boot' sorts first, label index 9
    renamed = [f"{i}_{c}" for i, c in enumerate(CLASSES)]  # sorts in label order, names differ from the labels
    by_index = _tree(tmp_path / "by_index", renamed)
    r1 = json.loads(invoke("eval", tiny_bundle, "--data", named, "--json").output)
    for target in (tiny_bundle, tiny_ckpt):
        one_line_error(invoke("eval", target, "--data", by_index), 2, "not among the labels")
    from edgecv.evaluate.bundle import eval_bundle
    from edgecv.runtime.backends.select import open_backend

    be, _ = open_backend(str(tiny_bundle), "onnxruntime")
    from edgecv.runtime.preprocess import Preprocessor

    pre = Preprocessor(open_bundle(tiny_bundle).preprocess)
    x, y = load_fashion_mnist(FASHION, "test")
    idx = np.concatenate([np.where(y == c)[0][:8] for c in range(10)])
    want = float((be.infer(np.stack([pre(x[i]) for i in idx])).argmax(1) == y[idx]).mean())
    assert r1["top1"] == pytest.approx(want) and r1["n"] == 80
    r2 = eval_bundle(str(tiny_bundle), str(named), show_progress=False)
    assert r2["top1"] == pytest.approx(want)
    r3 = json.loads(invoke("eval", tiny_ckpt, "--data", named, "--json").output)
    assert r3["n"] == 80 and r3["top1"] > 0.3  # the PyTorch path maps by name too (chance is 0.1)


@pytest.mark.parametrize("text,needle", [
    ("index\twnid\tname\n0\tn1\ta\n2\tn2\tb\n", "without gaps"),
    ("index\twnid\tname\n0\tn1\ta\nx\tn2\tb\n", "is not an integer"),
    ("index\twnid\tname\n0\tn1\ta\n1\tn1\tb\n", "appears twice"),
    ("index\twnid\tname\n0\tn1\ta\n0\tn2\tb\n", "index 0 appears twice"),
    ("index\twnid\tname\n0\tn1\n", "expected 3 tab-separated columns"),
    ("wnid\tname\n", "expected a header"),
    ("index\twnid\tname\n", "no classes listed"),
])
def test_classes_tsv_is_parsed_strictly(text, needle, tmp_path):
    (tmp_path / "classes.tsv").write_text(text)
    with pytest.raises(DatasetError, match=needle):
        read_classes_tsv(tmp_path / "classes.tsv")


def test_classes_tsv_in_latin1_is_named(tiny_bundle, tmp_path):
    (tmp_path / "classes.tsv").write_bytes("index\twnid\tname\n0\tn1\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"classes.tsv:2: not UTF-8"):
        read_classes_tsv(tmp_path / "classes.tsv")
    shutil.copy(next(iter(_tree(tmp_path / "t", ["a"]).rglob("*.png"))), tmp_path / "n1_x.png")
    one_line_error(invoke("eval", tiny_bundle, "--data", tmp_path), 2, "not UTF-8")


def _non_utf8_folder(tmp_path, imagenet_dir=None):
    d = _tree(tmp_path / "data", CLASSES, per_class=2)
    src = next((d / "Trouser").iterdir())
    dst = os.path.join(os.fsencode(d / "Trouser"), b"caf\xe9_\xff.png")
    shutil.copy(src, dst)
    open(os.path.join(os.fsencode(d / "Bag"), b"\xfe\xfe.png"), "wb").write(b"\x89PNG broken")
    return d


def test_a_non_utf8_checkpoint_path_passes_through_set(tiny_ckpt, tmp_path):
    """--set checkpoint=<a folder whose name is not UTF-8>/model.pt was 'not valid YAML' (YAML cannot hold the
    bytes), with advice to quote it that could not help; such a value is now taken as the path it is."""
    run = os.fsencode(tmp_path) + b"/caf\xe9"
    os.makedirs(run)
    shutil.copy(tiny_ckpt, os.fsdecode(run + b"/model.pt"))
    r = subprocess.run([sys.executable.encode(), b"-m", b"edgecv", b"eval", os.fsencode(TINY_RECIPE), b"--set",
                        b"checkpoint=" + run + b"/model.pt", b"--limit", b"50", b"--json"],
                       capture_output=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    assert json.loads(r.stdout)["n"] == 50


def test_non_utf8_file_names_do_not_crash(tiny_bundle, tmp_path):
    """cv2.imread segfaulted (exit 139) on a file name that is not UTF-8."""
    d = _non_utf8_folder(tmp_path)
    e = subprocess.run([sys.executable, "-m", "edgecv", "eval", str(tiny_bundle), "--data", str(d), "--json"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert e.returncode == 0, e.stderr[-1500:]
    res = json.loads(e.stdout)
    assert res["n"] == 21 and res["skipped"] == 1
    r = subprocess.run([sys.executable, "-m", "edgecv", "run", str(tiny_bundle), "--source", str(d), "--json"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    summary = json.loads(r.stderr.strip().splitlines()[-1])["summary"]
    assert summary["frames"] == 21 and summary["skipped"] == 1


def test_an_export_evaluated_on_a_non_utf8_folder_writes_its_report(tiny_ckpt, tmp_path):
    """--eval naming a folder whose name is not UTF-8: the bundle is written, and its report names the folder by
    its escape (the export used to end in 'internal error: UnicodeEncodeError' while writing report.md)."""
    data = _tree(tmp_path / "data", CLASSES, per_class=6)
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9_eval")
    os.rename(os.fsencode(data), odd)
    r = subprocess.run([sys.executable, "-m", "edgecv", "export", str(tiny_ckpt), "-o", str(tmp_path / "b"),
                        "--calib", str(FASHION), "--calib-samples", "64", "--eval", os.fsdecode(odd),
                        "--corruptions", "none", "--max-drop", "100", "--min-agreement", "0"],
                       capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-1500:]
    report = (tmp_path / "b" / "report.md").read_bytes().decode("utf-8")
    assert "caf\\udce9_eval" in report
    assert open_bundle(tmp_path / "b").manifest["summary"]["evaluation"]["source"] == os.fsdecode(odd)


def test_calibration_images_never_count_as_held_out(tiny_ckpt, tmp_path):
    """--calib and --eval naming the same images under different spellings (a symlink): the manifest records the
    truth, and no calibration image is scored."""
    alias = tmp_path / "fashion_alias"
    alias.symlink_to(FASHION)
    r = subprocess.run([sys.executable, "-m", "edgecv", "export", str(tiny_ckpt), "-o", str(tmp_path / "b"),
                        "--calib", str(alias), "--eval", str(FASHION), "--calib-samples", "200", "--json", "--corruptions", "none",
                        # the images are the point, not the budget (the tiny model's int8 agreement varies by CPU)
                        "--max-drop", "100", "--min-agreement", "0"],
                       capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)["summary"]
    assert s["evaluation"]["disjoint_from_calibration"] is True
    assert s["evaluation"]["left_out_as_calibration_images"] >= 20  # ~200 x 2000/10000 overlap, all left out
    assert s["evaluation"]["images"] + s["tune"]["images"] == 2000 and s["calibration"]["images"] == 200
    assert s["evaluation"]["disjoint_from_tune"] is True and s["tune"]["images"] == 600  # 30% chose the fallback
    assert len(s["evaluation"]["members_sha256"]) == 64


def test_export_output_is_edgecv_progress_not_library_chatter(tiny_ckpt, tmp_path):
    """A channel with near-zero weights and a real bias (a BatchNorm with gamma ~ 0): ONNX Runtime's quantizer logs
    an "Increased scale" line on the root logger for each such channel (4,065 lines in one Lite0 export). Those
    show with --verbose only; edgecv's own progress always shows."""
    import torch

    ck = torch.load(tiny_ckpt, weights_only=True)
    ck["state_dict"]["features.0.1.weight"][0] = 1e-12  # BN gamma of channel 0: folded weights ~0, bias beta
    ck["state_dict"]["features.0.1.bias"][0] = 3.0
    bad = tmp_path / "dead_channel.pt"
    torch.save(ck, bad)
    def export(*flags, out):
        return subprocess.run([sys.executable, "-m", "edgecv", *flags, "export", str(bad), "-o", str(tmp_path / out),
                               "--calib", str(FASHION), "--eval", str(FASHION), "--calib-samples", "64",
                               "--corruptions", "none", "--max-drop", "100", "--min-agreement", "0",
                               "--target", "onnxruntime"],  # every target quantizes with ONNX Runtime's quantizer
                              capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)

    r = export(out="b")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[edgecv" in r.stderr and "[root]" not in r.stderr
    r = export("-v", out="b2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Increased scale" in r.stderr  # the library's detail is there for whoever asks


def test_non_utf8_video_source_and_record_path(tiny_bundle, tmp_path):
    """cv2.VideoCapture and cv2.VideoWriter segfaulted on such names too."""
    vid = os.path.join(os.fsencode(tmp_path), b"clip\xff.mp4")
    w = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30, (64, 48))
    for i in range(12):
        w.write(np.full((48, 64, 3), i * 10, np.uint8))
    w.release()
    os.rename(tmp_path / "clip.mp4", vid)
    rec = os.path.join(os.fsencode(tmp_path), b"rec\xe9.mp4")
    r = subprocess.run([sys.executable, "-m", "edgecv", "run", str(tiny_bundle), "--source", os.fsdecode(vid),
                        "--record", os.fsdecode(rec)], capture_output=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    assert b"frames 12" in r.stdout and os.path.getsize(rec) > 1000
    assert sorted(os.listdir(os.fsencode(tmp_path))) == [b"clip\xff.mp4", b"rec\xe9.mp4"]



def test_fifos_and_devices_named_like_images_never_block(tiny_bundle, tmp_path):
    d = _tree(tmp_path / "d", ["Bag"], per_class=3)
    os.mkfifo(d / "Bag" / "pipe.jpg")
    (d / "Bag" / "zero.png").symlink_to("/dev/zero")
    r = subprocess.run([sys.executable, "-m", "edgecv", "run", str(tiny_bundle), "--source", str(d / "Bag"), "--json"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    summary = json.loads(r.stderr.strip().splitlines()[-1])["summary"]
    assert r.returncode == 0 and summary["frames"] == 3 and summary["skipped"] == 2
    res = json.loads(invoke("eval", tiny_bundle, "--data", d, "--allow-missing-classes", "--json").output)
    assert res["n"] == 3


@pytest.mark.parametrize("content", [b"[1, 2]", b'"a string"', b"null", b"{", b"\xff\xfe{}", b""])
def test_manifest_that_is_not_an_object_is_refused(content, bundle_copy):
    (bundle_copy / "manifest.json").write_bytes(content)
    for cmd in (["check", bundle_copy], ["eval", bundle_copy, "--data", FASHION], ["bench", bundle_copy]):
        r = invoke(*cmd)
        assert r.exit_code in (1, 2) and "manifest.json" in r.output and "Traceback" not in r.output, r.output


def test_a_path_the_file_system_cannot_hold_or_follow_is_one_line(tiny_ckpt, tmp_path):
    """A name over 255 bytes (ENAMETOOLONG) was an internal error from train, export, bench and explain; an output
    under a symbolic link that loops or dangles was an internal FileExistsError from train and export."""
    long = tmp_path / ("a" * 300)
    cases = [
        (["train", TINY_RECIPE, "-o", long], "File name too long (the file system cannot hold or follow this path)"),
        (["export", TINY_RECIPE, "--set", f"checkpoint={tiny_ckpt}", "-o", long], "File name too long"),
        (["bench", long], "File name too long"),
        (["explain", tiny_ckpt, f"{long}.png", "-o", tmp_path / "ex"], "File name too long"),
    ]
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    for link in ("loop1", "dangling"):
        for cmd in (["train", TINY_RECIPE], ["export", TINY_RECIPE, "--set", f"checkpoint={tiny_ckpt}"]):
            cases.append(([*cmd, "-o", tmp_path / link / "x"],
                          f"({tmp_path / link} is a symbolic link that leads nowhere: dangling, or a loop)"))
    for args, needle in cases:
        r = invoke(*args)
        one_line_error(r, 2, needle)
        assert len(r.output.strip().splitlines()[-1]) < 400  # the 300-byte name is shortened in the message
    assert not {p.name for p in tmp_path.iterdir()} - {"dangling", "loop1", "loop2", "ex"}  # nothing else made
