"""Blocks removed by depth pruning (edgecv.compress.depth) stay in the network as :class:`SkippedBlock`: a residual
block whose output is its input, which is what the block's own skip path carries when its branch is gone. The
checkpoint names them, so a depth-pruned model is rebuilt before its weights load."""
from __future__ import annotations

from typing import List

from torch import nn


class SkippedBlock(nn.Module):
    """A removed residual block: returns its input. Takes and ignores the extra arguments the family's forward
    passes its blocks (EfficientNet-Lite's ``drop_connect_rate``)."""

    def forward(self, x, *args, **kwargs):
        return x


def skipped_blocks(model: nn.Module) -> List[str]:
    """The module paths of ``model``'s removed blocks, in order."""
    return [name for name, m in model.named_modules() if isinstance(m, SkippedBlock)]


def skip_blocks(model: nn.Module, names: List[str]) -> nn.Module:
    """Replace each named block of ``model`` by a :class:`SkippedBlock`, in place. A name that is not a module of
    ``model`` raises ``KeyError`` naming it."""
    modules = dict(model.named_modules())
    for name in names:
        if not name or name not in modules:
            raise KeyError(f"no block {name!r} in {type(model).__name__}")
        model.set_submodule(name, SkippedBlock())
    return model
