"""Structured, dependency-aware channel pruning with Torch-Pruning.

Torch-Pruning traces the graph, so residual adds, depthwise convs and squeeze-excite blocks are
pruned consistently; channel counts are rounded to multiples of ``round_to`` (8: what int8 tensor
cores and NEON kernels like). The classifier head keeps its outputs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import nn

from edgecv.compress.macs import count_macs
from edgecv.models.heads import find_head

log = logging.getLogger("edgecv.prune")


@dataclass
class PruneReport:
    ratio: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    channels: Dict[str, Tuple[int, int]]  # conv name -> (before, after) output channels

    def as_dict(self) -> Dict:
        return {"ratio": self.ratio, "macs_before": self.macs_before, "macs_after": self.macs_after,
                "params_before": self.params_before, "params_after": self.params_after,
                "mac_reduction": self.macs_before / max(1, self.macs_after),
                "channels": {k: list(v) for k, v in self.channels.items()}}


def prune_channels(model: nn.Module, input_shape: Tuple[int, ...], ratio: float, round_to: int = 8,
                   example_batch: torch.Tensor | None = None) -> Tuple[nn.Module, PruneReport]:
    """Remove about ``ratio`` of the channels of every prunable layer group (L2-magnitude importance)."""
    import torch_pruning as tp

    if not 0 < ratio < 1:
        raise ValueError(f"prune ratio must be in (0, 1), got {ratio}")
    model = model.eval()
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    macs0, params0 = count_macs(model, input_shape)
    example = example_batch if example_batch is not None else torch.randn(1, *input_shape)
    _, head = find_head(model)
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=[head], round_to=round_to, global_pruning=False,
    )
    pruner.step()
    macs1, params1 = count_macs(model, input_shape)
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    report = PruneReport(ratio, macs0, macs1, params0, params1, {n: (before[n], after[n]) for n in before})
    log.info("pruned %.0f%% of channels: %.2f -> %.2f MMAC, %.3f -> %.3f M params", ratio * 100,
             macs0 / 1e6, macs1 / 1e6, params0 / 1e6, params1 / 1e6)
    return model, report
