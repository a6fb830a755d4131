"""Block-wise reconstruction (the QAT rung's fitting where a network cuts into blocks): the cut must give the
model's own output, the fit must bring the fake-quantized model closer to fp32 on images it never saw, and the
export records what it did."""
import numpy as np
import pytest
import torch
from conftest import FASHION
from torch import nn

from edgecv.compress.blockwise import BlockConfig, reconstruct, units
from edgecv.compress.qat import prepare_qat
from edgecv.models import create_model


@pytest.mark.parametrize("name, shape, count", [("efficientnet_lite0", (3, 96, 96), 18), ("resnet18", (3, 64, 64), 10),
                                                ("mobilenet_v2", (3, 64, 64), 20), ("fashion_cnn", (1, 28, 28), 6)])
def test_each_family_cuts_into_units_whose_chain_is_the_model(name, shape, count):
    model = create_model(name).eval()
    x = torch.randn(3, *shape)
    cut = units(model, x)
    assert cut is not None and len(cut) == count
    y = x
    with torch.no_grad():
        for fn, mods in cut:
            y = fn(y)
            assert mods and all(isinstance(m, nn.Module) for m in mods)
        assert torch.allclose(y, model(x), rtol=1e-4, atol=1e-5)
    fitted = {id(p) for _, mods in cut for m in mods for p in m.parameters()}
    assert fitted == {id(p) for p in model.parameters()}  # every parameter belongs to one unit's fit


class _Doubled(nn.Module):
    """A network of a known shape whose forward was changed by hand: the chain of its units is not its output."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        self.classifier = nn.Linear(4, 3)

    def forward(self, x):
        return 2 * self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def test_a_network_whose_chain_is_not_its_output_is_not_cut_and_not_touched():
    model = _Doubled().eval()
    x = np.random.default_rng(0).normal(size=(8, 1, 12, 12)).astype(np.float32)
    assert units(model, torch.from_numpy(x)) is None
    q = prepare_qat(model, x)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    assert reconstruct(model, q, x, BlockConfig(steps=2), show_progress=False) is None
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in before.items())


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    from edgecv.data.fashion_mnist import load_fashion_mnist
    from edgecv.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_ckpt)
    x, _ = load_fashion_mnist(FASHION, "test")
    return model.eval(), ((x[:1000, None].astype(np.float32) / 255 - 0.286) / 0.353).astype(np.float32)


def _kl(model, q, x):
    with torch.no_grad():
        t, s = model(torch.from_numpy(x)), q(torch.from_numpy(x))
    return float(nn.functional.kl_div(s.log_softmax(1), t.log_softmax(1), log_target=True, reduction="batchmean"))


def test_reconstruction_brings_the_int8_model_closer_to_fp32_on_images_it_never_saw(tiny):
    """Fitted on 256 Fashion-MNIST test images, judged on 744 others: the fake-quantized model's KL divergence to
    fp32 falls; fp32 is left as it was; the trace has one entry per unit."""
    model, x = tiny
    fit, held = x[:256], x[256:]
    q = prepare_qat(model, fit)
    fp_before = {k: v.clone() for k, v in model.state_dict().items()}
    before = _kl(model, q, held)
    trace = reconstruct(model, q, fit, BlockConfig(steps=60, lr=1e-4), show_progress=False)
    after = _kl(model, q, held)
    assert after < 0.9 * before, (before, after)  # 0.44x to 0.78x seen on tiny models of two trainings
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fp_before.items())
    assert [t["unit"] for t in trace] == list(range(len(units(model, torch.from_numpy(fit[:2])))))
    assert all(np.isfinite([t["first_loss"], t["last_loss"]]).all() for t in trace)
    assert not model.training and not q.training


def test_the_same_seed_gives_the_same_weights(tiny):
    model, x = tiny
    runs = []
    for _ in range(2):
        q = prepare_qat(model, x[:128])
        reconstruct(model, q, x[:128], BlockConfig(steps=5, lr=1e-3, seed=3), show_progress=False)
        runs.append(q.state_dict())
    assert all(torch.equal(v, runs[1][k]) for k, v in runs[0].items())


def test_a_diverging_fit_is_an_error_that_names_its_rate(tiny):
    from edgecv.errors import DivergedError

    model, x = tiny
    q = prepare_qat(model, x[:64])
    with pytest.raises(DivergedError, match="lr 1e\\+30"):
        reconstruct(model, q, x[:64], BlockConfig(steps=20, lr=1e30), show_progress=False)


def test_the_rung_falls_back_to_distillation_where_the_network_does_not_cut_and_says_so_when_asked_for_blocks():
    from types import SimpleNamespace

    from edgecv.errors import RecipeError
    from edgecv.export.qat_rung import fitting_method
    from edgecv.recipe import ExportConfig

    cal = SimpleNamespace(x=np.random.default_rng(0).normal(size=(4, 1, 12, 12)).astype(np.float32))
    odd, plain = _Doubled(), create_model("fashion_cnn")
    cal28 = SimpleNamespace(x=np.zeros((4, 1, 28, 28), np.float32))
    assert fitting_method(odd, cal, ExportConfig(qat_method="auto")) == "distill"
    assert fitting_method(plain, cal28, ExportConfig(qat_method="auto")) == "blocks"
    assert fitting_method(plain, cal28, ExportConfig(qat_method="distill")) == "distill"
    with pytest.raises(RecipeError, match="--qat-method blocks: _Doubled does not cut into blocks"):
        fitting_method(odd, cal, ExportConfig(qat_method="blocks"))


def test_an_unknown_qat_method_in_a_recipe_is_refused_by_name(tmp_path):
    from edgecv.errors import RecipeError
    from edgecv.recipe import load_recipe

    f = tmp_path / "r.yaml"
    f.write_text("model: {name: fashion_cnn}\nexport: {qat_method: brecq}\n")
    with pytest.raises(RecipeError, match="export.qat_method: expected one of"):
        load_recipe(f)
