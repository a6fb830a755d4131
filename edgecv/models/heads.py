"""Find and replace a classifier's final Linear layer (transfer learning)."""
from __future__ import annotations

from typing import Tuple

from torch import nn


def find_head(model: nn.Module) -> Tuple[str, nn.Linear]:
    """The last ``nn.Linear`` in module order: the classification head of every registered model."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    if last is None:
        raise ValueError(f"{type(model).__name__}: no Linear head found")
    return last


def replace_head(model: nn.Module, num_classes: int) -> nn.Linear:
    name, old = find_head(model)
    new = nn.Linear(old.in_features, num_classes)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], new)
    return new


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze everything but the head."""
    head_name, head = find_head(model)
    for p in model.parameters():
        p.requires_grad = trainable
    for p in head.parameters():
        p.requires_grad = True
