"""torchvision classifiers. Pretrained weights need a download, which this workplace cannot do:
``pretrained=True`` fails with a clear message unless the weights are in the torch hub cache."""
from __future__ import annotations

from edgecv.models.registry import register_model


def _tv(name: str, num_classes: int, pretrained: bool):
    import torchvision

    if pretrained:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        model = torchvision.models.get_model(name, weights=weights)
        if num_classes != 1000:
            from edgecv.models.heads import replace_head

            replace_head(model, num_classes)
        return model
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


@register_model
def resnet18(num_classes: int = 1000, pretrained: bool = False):
    return _tv("resnet18", num_classes, pretrained)


@register_model
def resnet50(num_classes: int = 1000, pretrained: bool = False):
    return _tv("resnet50", num_classes, pretrained)


@register_model
def mobilenet_v2(num_classes: int = 1000, pretrained: bool = False):
    return _tv("mobilenet_v2", num_classes, pretrained)


@register_model
def mobilenet_v3_small(num_classes: int = 1000, pretrained: bool = False):
    return _tv("mobilenet_v3_small", num_classes, pretrained)


@register_model
def mobilenet_v3_large(num_classes: int = 1000, pretrained: bool = False):
    return _tv("mobilenet_v3_large", num_classes, pretrained)
