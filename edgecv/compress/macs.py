"""Count MACs with forward hooks on Conv/Linear layers (subclasses included).

Torch-Pruning's counter misses Conv2d subclasses such as EfficientNet-Lite's static-same-padding conv
(it reports 0.021 GMAC for Lite0 instead of 0.385), so edgecv counts its own.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Tuple[int, ...]) -> Tuple[int, int]:
    """Return ``(MACs per image, parameter count)`` for one forward pass at ``input_shape`` (C,H,W)."""
    total = [0]

    def conv_hook(m: nn.Conv2d, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total[0] += out.numel() // out.shape[0] * k

    def linear_hook(m: nn.Linear, inp, out):
        total[0] += out.numel() // out.shape[0] * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total[0], sum(p.numel() for p in model.parameters())
