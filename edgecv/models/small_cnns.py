"""Small CNNs: the Fashion-MNIST quickstart model, the seed article's AlexNet-style ConvNet, tiny test models."""
from __future__ import annotations

import torch
from torch import nn

from edgecv.errors import ModelError
from edgecv.models.registry import register_model


def _conv_bn(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FashionCNN(nn.Module):
    """VGG-style CNN for 28x28 inputs: one conv at full resolution (cheap to train on a CPU), then two
    conv pairs at 14x14 and 7x7, global average pooling, linear head. About 22 MMAC at width 32."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_channels, w), nn.MaxPool2d(2),
            _conv_bn(w, 2 * w), _conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w), _conv_bn(4 * w, 4 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def fashion_cnn(num_classes: int = 10, pretrained: bool = False, in_channels: int = 1, width: int = 32):
    if pretrained:
        raise ModelError("fashion_cnn has no pretrained weights; train it with recipes/fashion_mnist.yaml")
    return FashionCNN(num_classes, in_channels, width)


@register_model
def tiny_cnn(num_classes: int = 10, pretrained: bool = False, in_channels: int = 1, width: int = 8):
    """A few thousand parameters: lets every pipeline path run in seconds on a CPU (tests)."""
    if pretrained:
        raise ModelError("tiny_cnn has no pretrained weights")
    return FashionCNN(num_classes, in_channels, width)


class SeedConvNet(nn.Module):
    """The seed article's AlexNet-style ConvNet.

    conv 11x11/4 64 -> pool -> conv 5x5 192 -> pool -> conv 3x3 384 -> pool -> conv 3x3 256 -> fc 4096
    -> dropout -> fc. Pool kernels/strides and the flattened size adapt to ``input_size`` so the same
    layer stack runs on 224 (ImageNet) or 64 (small images).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
                 hidden: int = 4096, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        )
        with torch.no_grad():
            n = self.features(torch.zeros(1, in_channels, input_size, input_size)).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(n, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def seed_convnet(num_classes: int = 1000, pretrained: bool = False, in_channels: int = 3,
                 input_size: int = 224, hidden: int = 4096, dropout: float = 0.5):
    if pretrained:
        raise ModelError("seed_convnet has no pretrained weights")
    return SeedConvNet(num_classes, in_channels, input_size, hidden, dropout)
