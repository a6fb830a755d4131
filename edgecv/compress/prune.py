"""Structured channel pruning, by one of two methods (``PRUNE_METHODS``):

- ``reconstruct`` (edgecv.compress.reconstruct): the hidden channels of inverted-residual blocks (MobileNetV2,
  EfficientNet-Lite), chosen on calibration images, each block's projection refitted by least squares;
- ``magnitude``: dependency-aware pruning of every layer group with Torch-Pruning, by L2 magnitude. Torch-Pruning
  traces the graph, so residual adds, depthwise convs and squeeze-excite blocks are pruned consistently.

``auto`` is ``reconstruct`` where the model has inverted-residual blocks and images are given, else ``magnitude``.
Channel counts are rounded to multiples of ``round_to`` (``PRUNE_ROUND_TO``, 16: where ONNX Runtime's int8
kernels are fast). The classifier head keeps its outputs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from edgecv.compress.macs import count_macs
from edgecv.models.heads import find_head
from edgecv.recipe import PRUNE_METHODS, PRUNE_ROUND_TO

log = logging.getLogger("edgecv.prune")


@dataclass
class PruneReport:
    ratio: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    channels: Dict[str, Tuple[int, int]]  # conv name -> (before, after) output channels
    method: str = "magnitude"
    # reconstruct: each block's relative squared error left after its refit, on the calibration images
    refit_error: Optional[Dict[str, float]] = None

    def as_dict(self) -> Dict:
        return {"ratio": self.ratio, "method": self.method, "macs_before": self.macs_before, "macs_after": self.macs_after,
                "params_before": self.params_before, "params_after": self.params_after,
                "mac_reduction": self.macs_before / max(1, self.macs_after),
                "channels": {k: list(v) for k, v in self.channels.items()},
                **({"refit_error": self.refit_error} if self.refit_error else {})}


def resolve_method(model: nn.Module, method: str, have_images: bool) -> str:
    """The method ``method`` means for ``model``: ``auto`` picks ``reconstruct`` where it applies."""
    from edgecv.compress.reconstruct import find_units

    if method not in PRUNE_METHODS:
        raise ValueError(f"unknown prune method {method!r} (expected one of {', '.join(PRUNE_METHODS)})")
    has_units = bool(find_units(model))
    if method == "reconstruct" and not has_units:
        raise ValueError(f"prune method reconstruct: {type(model).__name__} has no inverted-residual blocks "
                         "(MobileNetV2, EfficientNet-Lite); use magnitude")
    if method == "reconstruct" and not have_images:
        raise ValueError("prune method reconstruct: needs images to refit the blocks on")
    if method == "auto":
        return "reconstruct" if has_units and have_images else "magnitude"
    return method


def prune_channels(model: nn.Module, input_shape: Tuple[int, ...], ratio: float, round_to: int = PRUNE_ROUND_TO,
                   images: Optional[np.ndarray] = None, method: str = "auto", show_progress: bool = False
                   ) -> Tuple[nn.Module, PruneReport]:
    """Remove about ``ratio`` of the prunable channels of ``model`` (in place) with ``method`` (PRUNE_METHODS).
    ``images`` (N,C,H,W float32, preprocessed): what ``reconstruct`` refits on; ``magnitude`` traces one."""
    if not 0 < ratio < 1:
        raise ValueError(f"prune ratio must be in (0, 1), got {ratio}")
    method = resolve_method(model, method, images is not None and len(images) > 0)
    model = model.eval()
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    macs0, params0 = count_macs(model, input_shape)
    errors = None
    if method == "reconstruct":
        from edgecv.compress.reconstruct import prune_hidden

        errors = prune_hidden(model, images, ratio, round_to, show_progress)
    else:
        _magnitude(model, input_shape, ratio, round_to, images)
    macs1, params1 = count_macs(model, input_shape)
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    report = PruneReport(ratio, macs0, macs1, params0, params1, {n: (before[n], after[n]) for n in before},
                         method, errors)
    log.info("pruned %.0f%% of channels (%s): %.2f -> %.2f MMAC, %.3f -> %.3f M params", ratio * 100, method,
             macs0 / 1e6, macs1 / 1e6, params0 / 1e6, params1 / 1e6)
    return model, report


def _magnitude(model: nn.Module, input_shape: Tuple[int, ...], ratio: float, round_to: int,
               images: Optional[np.ndarray]) -> None:
    """Torch-Pruning over every layer group, L2-magnitude importance, the same ratio in each group."""
    import torch_pruning as tp

    example = torch.from_numpy(np.ascontiguousarray(images[:2])) if images is not None and len(images) else \
        torch.randn(1, *input_shape)
    _, head = find_head(model)
    ratios = _layer_ratios(model, ratio, round_to, head)
    if not any(ratios.values()):
        widest = max(_width(m) for m in ratios) if ratios else 0
        raise ValueError(f"--prune {ratio}: no layer can be pruned at multiples of {round_to} channels (each keeps "
                         f"at least {round_to}; the widest has {widest}): lower export.prune_round_to")
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio, pruning_ratio_dict=ratios, ignored_layers=[head], round_to=round_to,
        global_pruning=False,
    )
    pruner.step()


def _width(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def _layer_ratios(model: nn.Module, ratio: float, round_to: int, head: nn.Module) -> Dict[nn.Module, float]:
    """Per Conv2d/Linear (the head aside): the share of its output channels Torch-Pruning removes so that it keeps
    ``(1 - ratio)`` of them rounded down to a multiple of ``round_to``, and never fewer than ``round_to`` (0 where it
    has no more). Torch-Pruning itself rounds a count that falls under ``round_to`` down to nothing and then leaves
    that layer whole: --prune 0.9 of a 32-wide CNN at multiples of 16 removed nothing, and 0.8 less than 0.5."""
    out = {}
    for m in model.modules():
        if m is head or not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        c = _width(m)
        keep = max(round_to, int(c * (1 - ratio)) // round_to * round_to)
        # Torch-Pruning keeps int(c * (1 - r)) channels: half a channel of margin makes that exactly ``keep``
        out[m] = (c - keep - 0.5) / c if keep < c else 0.0
    return out
