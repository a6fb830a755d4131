"""Robustness under corruption: the corruptions themselves, the report's arithmetic, the export's report and
gate, and ``edgecv eval --corruptions``."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FASHION

from edgecv.bundle.reader import open_bundle
from edgecv.data.corruptions import CORRUPTIONS, corrupt, parse_names, severities
from edgecv.evaluate.robustness import corruption_report
from edgecv.runtime.backends.openvino import OpenVinoBackend


def cli():
    from edgecv.cli import cli as group

    return group


@pytest.fixture(scope="module")
def photos(imagenet_dir):
    import cv2

    from edgecv.utils.images import read_image

    files = sorted(imagenet_dir.glob("*.JPEG"))[:6]
    return np.stack([cv2.resize(read_image(f), (224, 224))[..., ::-1].transpose(2, 0, 1) for f in files])


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_seeded_per_image_and_grows_with_severity(name, photos):
    outs = [corrupt(photos, name, s) for s in (1, 3, 5)]
    for o in outs:
        assert o.dtype == np.uint8 and o.shape == photos.shape
    assert np.array_equal(outs[1], corrupt(photos, name, 3))  # same seed: the same images
    assert np.array_equal(corrupt(photos[[3, 2]], name, 3), outs[1][[3, 2]])  # per image: any order or batch
    if name == "fog":  # it washes the image out: correlation with the original falls (ImageNet-C's 3 and 4 are close)
        change = [1 - np.mean([np.corrcoef(o[i].ravel(), photos[i].ravel())[0, 1] for i in range(len(o))]) for o in outs]
        assert 0.2 < change[0] < change[2], change
    else:
        change = [np.abs(o.astype(float) - photos).mean() for o in outs]
        assert 0.5 < change[0] < change[1] < change[2], change
    gray = corrupt(photos[:, :1, :28, :28].copy(), name, 5)  # one channel, small images
    assert gray.shape == (6, 1, 28, 28)


def test_corruptions_do_what_their_names_say(photos):
    grey = np.full((1, 3, 224, 224), 100, np.uint8)
    assert abs(int(corrupt(grey, "brightness", 1)[0, 0, 0, 0]) - 126) <= 1  # HSV value + 0.1
    c = corrupt(photos[:1], "contrast", 1).astype(float)[0]
    p = photos[0].astype(float)
    assert np.allclose(c.mean((1, 2)), p.mean((1, 2)), atol=1.0)  # means kept
    assert np.allclose(c.std((1, 2)), 0.4 * p.std((1, 2)), rtol=0.05)  # spread x 0.4 at severity 1
    px = corrupt(photos[:1], "pixelate", 5)[0]  # 224 -> 56 -> 224: 4x4 blocks
    blocks = px.reshape(3, 56, 4, 56, 4)
    assert (blocks == blocks[:, :, :1, :, :1]).all()
    sp = corrupt(photos[:1], "impulse_noise", 5)[0]
    changed = (sp != photos[0]).any(0)
    assert 0.2 < changed.mean() < 0.3 and np.isin(sp[:, changed], [0, 255]).all()  # salt and pepper, 27%
    dark = corrupt(photos[:1], "low_light", 5)[0]
    assert dark.mean() < 0.2 * photos[0].mean()


def test_names_and_severities_are_parsed_strictly():
    assert parse_names("noise") == ["gaussian_noise", "shot_noise", "impulse_noise"]
    assert len(parse_names("all")) == len(CORRUPTIONS) and parse_names("fog,fog,blur")[0] == "fog"
    with pytest.raises(ValueError, match="unknown corruption 'rain'.*weather"):
        parse_names("rain")
    assert list(severities("1-5")) == [1, 2, 3, 4, 5] and list(severities("5,1")) == [1, 5]
    for bad in ("0", "6", "", "1-9"):
        with pytest.raises(ValueError):
            severities(bad)


def test_extra_drop_is_the_drop_beyond_the_clean_one(photos):
    """A model equal to fp32 on clean images that breaks under noise has a large extra drop there, and none
    under blur; fp32 against itself has none anywhere."""
    spec = {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": 224, "channels": 3}
    def fp32(x):  # "class" = whether the image's centre is brighter than its mean, as two logits
        d = x[:, :, 100:124, 100:124].mean((1, 2, 3)) - x.mean((1, 2, 3))
        return np.stack([-d, d], 1).astype(np.float32)

    def fragile(x):  # flips its answer when the image is noisy (high-frequency energy)
        hf = np.abs(np.diff(x, axis=3)).mean((1, 2, 3))
        out = fp32(x)
        return np.where((hf > 0.6)[:, None], -out, out)  # clean photos: 0.09-0.48; noise at 3: over 0.7

    from edgecv.bundle.golden import to_inputs

    y = fp32(to_inputs(photos, spec)).argmax(1)  # labels: fp32's clean answers (top-1 1.0 on clean images)
    rep = corruption_report({"fp32": fp32, "int8": fragile}, "fp32", photos, y, spec,
                            ["gaussian_noise", "gaussian_blur"], [3, 5], show_progress=False)
    s = rep["summary"]
    assert s["fp32"]["worst_extra_drop"] == 0 and s["int8"]["clean_top1"] == s["fp32"]["clean_top1"]
    assert s["int8"]["corruptions"]["gaussian_noise"]["agreement"] == 0.0
    assert s["int8"]["corruptions"]["gaussian_blur"] == {**s["fp32"]["corruptions"]["gaussian_blur"], "agreement": 1.0}
    assert s["int8"]["worst"] == "gaussian_noise" and s["int8"]["worst_extra_drop"] > 50
    assert len(rep["rows"]) == 2 * 2 * 2  # corruptions x severities x models

    from edgecv.export.pipeline import corruption_failures
    from edgecv.recipe import ExportConfig

    cfg = ExportConfig(max_corruption_drop=1.0)
    fails = corruption_failures(rep, cfg)
    assert len(fails) == 1 and fails[0].startswith("int8 under gaussian_noise")
    assert corruption_failures(rep, ExportConfig()) == []  # no budget: reported only


def test_every_export_writes_the_corruption_report(tiny_bundle):
    b = open_bundle(tiny_bundle)
    rob = b.manifest["summary"]["robustness"]
    assert rob["images"] == 30  # the tiny recipe's export.corruption_images
    assert rob["severities"] == [3] and len(rob["corruptions"]) == len(CORRUPTIONS)  # the tiny recipe's
    models = set(rob["summary"])
    bf16 = {"openvino bf16"} if OpenVinoBackend.has_bf16() else set()  # written only where this CPU has bf16 units
    assert {"fp32", "unpruned fp32", "onnxruntime int8", "openvino int8", "tensorrt int8 (on ONNX Runtime)"} | bf16 == models
    assert rob["summary"]["fp32"]["worst_extra_drop"] == 0.0
    assert "corruptions.png" in b.manifest["files"] and (tiny_bundle / "corruptions.png").stat().st_size > 10000
    report = (tiny_bundle / "report.md").read_text()
    assert "## Robustness under corruption" in report and "| gaussian_noise | noise |" in report


def test_eval_corruptions_cli(tiny_bundle, tmp_path):
    r = CliRunner().invoke(cli(), ["eval", str(tiny_bundle), "--data", str(FASHION), "--corruptions", "noise,fog",
                                   "--severities", "1,5", "--limit", "40", "-o", str(tmp_path / "rob"), "--json"])
    assert r.exit_code == 0, r.output[-2000:]
    rep = json.loads(r.output)
    assert rep["images"] == 40 and rep["corruptions"] == ["gaussian_noise", "shot_noise", "impulse_noise", "fog"]
    assert {"fp32", "onnxruntime int8", "openvino int8"} <= set(rep["summary"])
    assert len(rep["rows"]) == 4 * 2 * len(rep["summary"])
    assert json.loads((tmp_path / "rob" / "corruptions.json").read_text())["images"] == 40
    assert (tmp_path / "rob" / "corruptions.png").is_file() and "| fog | weather |" in (tmp_path / "rob" / "corruptions.md").read_text()
    bad = CliRunner().invoke(cli(), ["eval", str(tiny_bundle), "--data", str(FASHION), "--corruptions", "rain"])
    assert bad.exit_code == 2 and "unknown corruption 'rain'" in bad.output
