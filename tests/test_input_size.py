"""``edgecv export --input-size``: the shipped model runs at another resolution, distilled from the source at its
own; every number about the source still comes from the source's resolution."""
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_RECIPE

from edgecv import targets
from edgecv.cli import cli
from edgecv.compress.distill import AtSize, DistillConfig, distill
from edgecv.data.transforms import at_input_size
from edgecv.errors import RecipeError
from edgecv.export.options import resolve_options
from edgecv.recipe import DataConfig, load_recipe


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory, tiny_ckpt):
    """The tiny recipe exported at 20 px (its source runs at 28), pruned by half and distilled for one epoch."""
    from edgecv.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny20"
    export_bundle(str(TINY_RECIPE), str(out), {"distill_epochs": 1, "input_size": 20, "corruptions": "gaussian_noise"},
                  [f"checkpoint={tiny_ckpt}", "data.train_limit=1000"], show_progress=False)
    return out


def test_at_input_size_scales_the_resize():
    cfg = DataConfig(input_size=224, resize=256)
    small = at_input_size(cfg, 160)
    assert (small.input_size, small.resize) == (160, 183)  # 256 * 160 / 224 = 182.9: the crop covers the same part
    assert at_input_size(cfg, None) is cfg and at_input_size(cfg, 224) is cfg
    whole = at_input_size(DataConfig(input_size=224, resize=None), 176)
    assert (whole.input_size, whole.resize) == (176, 176)


def test_bundle_at_input_size_ships_that_size(small_bundle, tiny_bundle):
    m = json.loads((small_bundle / "manifest.json").read_text())
    pre = json.loads((small_bundle / "preprocess.json").read_text())
    assert pre["input_size"] == 20 and pre["resize"] == 20
    fp32 = onnx.load(str(small_bundle / "model_fp32.onnx"))
    dims = [d.dim_value for d in fp32.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [1, 20, 20]
    s = m["summary"]
    assert s["input_size"]["source"] == 28 and s["input_size"]["export"] == 20
    assert s["input_size"]["top1_after_distill"] == s["prune"]["top1_after_distill"]
    # the source's top-1 is measured at its own 28 px on the same evaluation images as the 28-px export's
    base = json.loads((tiny_bundle / "manifest.json").read_text())["summary"]
    assert s["baseline"]["top1"] == base["baseline"]["top1"]
    assert s["evaluation"]["members_sha256"] == base["evaluation"]["members_sha256"]
    assert s["stages"][1]["stage"] == "at 20 px"
    for a in m["artifacts"]:  # every artefact runs at 20 px, and each was timed (the baseline at 28)
        assert a["latency_ms"] > 0
    assert s["baseline"]["latency_ms"] > 0
    report = (small_bundle / "report.md").read_text()
    assert "The model ships at 20 px (resize 20); the source runs at 28 px." in report
    assert f"| (source fp32 at 28 px) | onnxruntime | fp32 | {s['baseline']['top1']:.4f} |" in report
    # the speed-up the user asks for: against the unpruned source in int8 on the same runtime, timed at its 28 px
    ref = s["baseline"]["int8_latency_ms"]
    cpu = {a["target"] for a in m["artifacts"] if a["precision"] == "int8" and targets.get(a["target"]).host_latency}
    assert cpu and set(ref) == cpu and all(v > 0 for v in ref.values())
    for a in m["artifacts"]:
        if a["target"] in ref:
            assert a["speedup_vs_unpruned_int8"] == pytest.approx(ref[a["target"]] / a["latency_ms"])
            assert f"| {a['target']} | {a['file']} | {a['precision']} | {a['latency_ms']:.3f} |" in report
    assert "## Speed against the unpruned model in int8" in report
    # the robustness report leaves the 28-px source out: it cannot read the shipped model's 20-px images
    rob = s["robustness"]["summary"]
    assert "fp32" in rob and "onnxruntime int8" in rob and "unpruned fp32" not in rob
    golden = np.load(small_bundle / "golden.npz")
    assert golden["pixels"].shape[2:] == (20, 20)


def test_bundle_at_input_size_answers_like_its_fp32(small_bundle):
    """The shipped fp32 ONNX, fed the bundle's own preprocessing of the golden pixels, gives the golden logits."""
    from edgecv.bundle.golden import to_inputs
    from edgecv.export.gates import onnx_logits

    pre = json.loads((small_bundle / "preprocess.json").read_text())
    g = np.load(small_bundle / "golden.npz")
    logits = onnx_logits(small_bundle / "model_fp32.onnx", to_inputs(g["pixels"], pre))
    assert np.abs(logits - g["logits"]).max() < 1e-4


def test_pruned_checkpoint_records_the_new_size(small_bundle):
    from edgecv.models.checkpoint import load_checkpoint

    model, ck = load_checkpoint(small_bundle / "pruned_model.pt")
    assert ck["preprocess"]["input_size"] == 20
    assert model(torch.zeros(2, 1, 20, 20)).shape == (2, 10)


def test_distill_feeds_the_student_its_size_and_the_teacher_the_loaders():
    seen = {"student": set(), "teacher": set()}
    teacher, student = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4)), \
        torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4))
    teacher.register_forward_pre_hook(lambda m, a: seen["teacher"].add(tuple(a[0].shape[-2:])))
    student.register_forward_pre_hook(lambda m, a: seen["student"].add(tuple(a[0].shape[-2:])))
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 4, (16,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), 8)
    before = student[2].weight.clone()
    torch.manual_seed(7)
    caller_state = torch.random.get_rng_state()
    distill(student, teacher, loader, loader, DistillConfig(epochs=1, lr=0.1, student_size=24), show_progress=False)
    assert torch.equal(torch.random.get_rng_state(), caller_state)  # distillation's seeding stays inside it
    assert seen == {"student": {(24, 24)}, "teacher": {(32, 32)}}
    assert not torch.equal(before, student[2].weight)  # the wrapped student itself was trained


def test_at_size_resizes_like_the_preprocessing():
    x = torch.rand(1, 3, 64, 64)
    out = AtSize(torch.nn.Identity(), 32)(x)
    assert out.shape == (1, 3, 32, 32)
    # antialiased: a 2x downscale averages (a plain bilinear sample of a checkerboard would alias to one colour)
    board = (torch.arange(64)[:, None] + torch.arange(64)[None]) % 2
    small = AtSize(torch.nn.Identity(), 32)(board.float()[None, None].expand(1, 3, 64, 64))
    assert torch.allclose(small, torch.full_like(small, 0.5), atol=0.05)


def test_distill_with_input_size_alone_is_accepted():
    r = load_recipe(TINY_RECIPE, ["export.prune=0"])
    assert resolve_options(r, {"distill": True, "input_size": 20}).input_size == 20
    with pytest.raises(RecipeError, match="needs --prune, --drop-blocks or --input-size"):
        resolve_options(r, {"distill": True})


@pytest.mark.parametrize("size, msg", [("4", "--input-size: must be >= 8"), ("abc", "is not a valid integer"),
                                       ("28", "--input-size 28 is the source's own input size")])
def test_bad_input_size_is_refused_by_name(size, msg, tmp_path, tiny_ckpt):
    out = tmp_path / "b"
    r = CliRunner().invoke(cli, ["export", str(TINY_RECIPE), "-o", str(out), "--input-size", size, "--prune", "0",
                                 "--distill", "--set", f"checkpoint={tiny_ckpt}"])
    assert r.exit_code == 2 and msg in r.output, r.output
    assert not out.exists()


def test_model_that_cannot_change_size_is_refused(tmp_path):
    """seed_convnet flattens into a Linear sized for its input: at another size it cannot run."""
    from edgecv.train.loop import train

    sets = ["model.name=seed_convnet", "model.args={input_size: 64, hidden: 32, in_channels: 1}", "data.input_size=64",
            "train.epochs=1", "data.train_limit=256"]
    train(load_recipe(TINY_RECIPE, sets), tmp_path / "run", show_progress=False)
    out = tmp_path / "b"
    args = ["export", str(TINY_RECIPE), "-o", str(out), "--input-size", "96", "--no-distill", "--prune", "0",
            "--no-int8"]
    r = CliRunner().invoke(cli, args + [a for v in sets + [f"checkpoint={tmp_path / 'run' / 'model.pt'}"]
                                        for a in ("--set", v)])
    assert r.exit_code == 2, r.output
    assert "--input-size 96: seed_convnet cannot run at that size (mat1 and mat2 shapes" in r.output
    assert not out.exists()


def test_every_image_set_is_read_at_the_input_size(tiny_ckpt, tmp_path):
    """With a calibration set of pools: calibration, tune agreement and QAT images at the new size; evaluation and
    tune images at both sizes, the same photographs split the same way."""
    import cv2
    from conftest import FASHION

    from edgecv.data.fashion_mnist import load_fashion_mnist
    from edgecv.export.pipeline import load

    x, _ = load_fashion_mnist(FASHION, "train")
    (tmp_path / "p").mkdir()
    for i, img in enumerate(x[:200]):
        cv2.imwrite(str(tmp_path / "p" / f"{i}.png"), img.squeeze())
    cset = tmp_path / "pools.yaml"
    cset.write_text(f"pools:\n  - {{images: {tmp_path / 'p'}}}\nsamples: 32\nagreement: 40\nqat: 60\n")
    run = load(str(TINY_RECIPE), {"calib": str(cset), "input_size": 20},
               [f"checkpoint={tiny_ckpt}", "export.eval_limit=100"], show_progress=False)
    assert run.cal.x.shape[1:] == run.agree.x.shape[1:] == run.ev.x.shape[1:] == (1, 20, 20)
    assert tuple(run.qat_images[0][0].shape) == (1, 20, 20)
    assert run.ev_src.x.shape[1:] == run.tune_src.x.shape[1:] == (1, 28, 28)
    assert run.ev_src.ids == run.ev.ids and run.tune_src.ids == run.tune.ids
    assert (run.ev_src.y == run.ev.y).all() and len(run.ev) + len(run.tune) == 100


def test_a_model_too_coarse_at_the_input_size_is_refused_by_name(tiny_ckpt, tmp_path):
    """At 12 px the 28-px Fashion-MNIST model loses far more than the budget: refused before the int8 ladder,
    naming the input size, and nothing written."""
    from edgecv.errors import ExportError
    from edgecv.export.pipeline import export_bundle

    out = tmp_path / "b"
    with pytest.raises(ExportError, match=r"the fp32 model at 12 px is already .* points below the source .*; a "
                                          r"larger --input-size, or distill longer \(budget --max-drop 0.5\)"):
        export_bundle(str(TINY_RECIPE), str(out), {"input_size": 12, "prune": 0.0, "distill": False,
                                                   "max_drop": 0.5}, [f"checkpoint={tiny_ckpt}"], show_progress=False)
    assert not out.exists()


def test_an_input_size_too_large_for_memory_is_refused_before_reading_the_images(tiny_ckpt, tmp_path):
    """A zero too many (the evaluation split at that size would not fit in this machine's memory): a clear error
    after the first image, not an out-of-memory kill after minutes."""
    import math

    from edgecv.utils.limits import available_memory

    free = available_memory()
    if free is None:
        pytest.skip("this system does not report available memory")
    size = math.ceil(math.sqrt(free / (2 * 4 * 10000))) + 16  # 10,000 one-channel evaluation images
    if size > 4096:
        pytest.skip(f"{free / 2**30:.0f} GiB available: no allowed --input-size overflows it")
    out = tmp_path / "b"
    r = CliRunner().invoke(cli, ["export", str(TINY_RECIPE), "-o", str(out), "--input-size", str(size),
                                 "--no-distill", "--prune", "0", "--set", f"checkpoint={tiny_ckpt}",
                                 "--set", "export.eval_limit=10000", "--set", "data.val_limit=null"])
    assert r.exit_code == 2, r.output
    assert f"evaluation images: 10000 images of 1 x {size} x {size} float32 need" in r.output
    assert "lower --input-size" in r.output and not out.exists()
