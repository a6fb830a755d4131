"""Depth pruning: whole residual blocks removed, where the block's skip path then carries its input on alone.

Which blocks go is judged on calibration images: each removable block (an inverted-residual block with an identity
skip: MobileNetV2, EfficientNet-Lite) is removed alone and scored by how far the network's output moves (the KL
divergence of its softmax from the unpruned network's, mean over the images) per million MACs it saves; the
``n`` blocks that cost least per MAC go. Removing a block saves a fixed share of the time at any input size, and
unlike channel pruning it leaves every remaining layer as wide as the kernels like. Distillation then recovers
what was lost (``edgecv export --drop-blocks N --distill``).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from edgecv.compress.macs import count_macs
from edgecv.models.blocks import skip_blocks
from edgecv.utils.progress import progress

log = logging.getLogger("edgecv.depth")

IMAGES = 256  # calibration images each removal is scored on
BATCH = 32


@dataclass
class DepthReport:
    """What depth pruning removed: the blocks in network order, each candidate's score (KL per million MACs
    saved), and the MACs and parameters before and after."""

    dropped: List[str]
    scores: Dict[str, float]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    kl: Dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> Dict:
        return {"dropped_blocks": self.dropped, "candidates": len(self.scores), "macs_before": self.macs_before,
                "macs_after": self.macs_after, "mac_reduction": self.macs_before / max(1, self.macs_after),
                "params_before": self.params_before, "params_after": self.params_after,
                "kl_per_mmac": self.scores, "kl": self.kl}


def removable_blocks(model: nn.Module) -> List[str]:
    """Module paths of ``model``'s blocks that can go: inverted-residual blocks whose output adds their input."""
    from edgecv.compress.reconstruct import find_units

    return [u.name for u in find_units(model) if u.skip and u.name != "stem"]


def blocks_to_drop(model: nn.Module, n: int) -> List[str]:
    """``model``'s removable blocks, after checking that ``n`` of them can go; ValueError naming the count if not."""
    names = removable_blocks(model)
    kind = type(model).__name__
    if not names:
        raise ValueError(f"--drop-blocks {n}: {kind} has no removable residual blocks (MobileNetV2 and "
                         "EfficientNet-Lite have them)")
    if not 0 < n <= len(names):
        raise ValueError(f"--drop-blocks {n}: {kind} has {len(names)} removable residual blocks, so 1 to "
                         f"{len(names)} can go")
    return names


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(images[i: i + BATCH]).float() for i in range(0, len(images), BATCH)])


def _kl(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(torch.nn.functional.kl_div(out.log_softmax(1), ref.log_softmax(1), log_target=True,
                                            reduction="batchmean"))


def drop_blocks(model: nn.Module, n: int, images: np.ndarray, input_shape: Tuple[int, ...],
                show_progress: bool = False) -> Tuple[nn.Module, DepthReport]:
    """Remove ``n`` residual blocks of ``model`` (in place): those whose removal alone moves the output on
    ``images`` (N,C,H,W float32, preprocessed; the first ``IMAGES`` are used) least per MAC saved."""
    names = blocks_to_drop(model, n)
    if images is None or len(images) == 0:
        raise ValueError("--drop-blocks: needs calibration images to judge the blocks on")
    model = model.eval()
    x = torch.from_numpy(np.ascontiguousarray(images[:IMAGES]))
    macs0, params0 = count_macs(model, input_shape)
    ref = _logits(model, x)
    kl, scores = {}, {}
    for name in progress(names, desc="score blocks", show=show_progress):
        trial = skip_blocks(copy.deepcopy(model), [name])
        kl[name] = _kl(ref, _logits(trial, x))
        saved = macs0 - count_macs(trial, input_shape)[0]
        scores[name] = kl[name] / max(saved / 1e6, 1e-6)
    order = sorted(names, key=lambda k: scores[k])
    dropped = [k for k in names if k in order[:n]]  # network order
    skip_blocks(model, dropped)
    macs1, params1 = count_macs(model, input_shape)
    log.info("dropped %d blocks (%s): %.2f -> %.2f MMAC", n, ", ".join(dropped), macs0 / 1e6, macs1 / 1e6)
    return model, DepthReport(dropped, scores, macs0, macs1, params0, params1, kl)
