"""Pruning the hidden channels of inverted-residual blocks, each block refitted by least squares on real images.

An inverted-residual block (MobileNetV2, EfficientNet-Lite) widens its input with a 1x1 "expand" conv, filters each
channel alone with a depthwise conv and projects back with a 1x1 conv. Its hidden channels do not mix until the
projection, so any of them can be removed without touching another layer, and they hold most of the MACs. The
stem conv and the first block's depthwise conv form such a unit too.

Which channels stay is judged on images: a channel's mean energy at the projection's input times the squared norm of
its (BatchNorm-folded) projection weights. Then the projection is refitted by ridge regression so that the block's
output matches the unpruned network's on those images, given the earlier blocks as already pruned, so each block
also makes up for the error of the ones before it (channel pruning by reconstruction: He et al. 2017, ThiNet, Luo et
al. 2017). On the Caltech-101 Lite0, half the hidden channels removed answered 92% right before any training, where
Torch-Pruning's magnitude criterion over 30% of all channels answered 13% (docs/pruning.md).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from edgecv.recipe import PRUNE_ROUND_TO
from edgecv.utils.memory import keep_freed_memory
from edgecv.utils.progress import progress

ROWS_PER_BATCH = 4096  # sampled positions per batch of images and per block: the regression's rows
BATCH = 32
IMAGES = 512  # images refitted on at most (65k sampled rows per block); the time grows with them
RIDGE = 1e-4  # relative to the mean diagonal of the Gram matrix: keeps nearly collinear channels solvable


@dataclass
class Unit:
    """One inverted-residual block seen as expand -> depthwise -> project (each conv followed by its BatchNorm);
    ``skip``: the block adds its input to the projection's output; ``entry``: the top-level module whose first
    argument is the unit's input (its block), None where that is the network's input (the stem)."""

    name: str
    expand: nn.Conv2d
    expand_bn: nn.BatchNorm2d
    depthwise: nn.Conv2d
    depthwise_bn: nn.BatchNorm2d
    project: nn.Conv2d
    project_bn: nn.BatchNorm2d
    skip: bool
    entry: Optional[nn.Module]

    @property
    def hidden(self) -> int:
        return self.expand.out_channels


def _lite_units(model: nn.Module) -> List[Unit]:
    """EfficientNet-Lite (efficientnet_lite_pytorch): the stem with block 0, then every block that expands."""
    blocks = list(model._blocks)
    units = []
    if not hasattr(blocks[0], "_expand_conv"):
        b = blocks[0]
        units.append(Unit("stem", model._conv_stem, model._bn0, b._depthwise_conv, b._bn1, b._project_conv, b._bn2,
                          False, None))
    for i, b in enumerate(blocks):
        if hasattr(b, "_expand_conv") and not getattr(b, "has_se", False):
            a = b._block_args
            skip = bool(b.id_skip and a.stride in (1, [1]) and a.input_filters == a.output_filters)
            units.append(Unit(f"_blocks.{i}", b._expand_conv, b._bn0, b._depthwise_conv, b._bn1, b._project_conv,
                              b._bn2, skip, b))
    return units


def _mobilenet_v2_units(model: nn.Module) -> List[Unit]:
    """torchvision's MobileNetV2: features[0] with features[1], then every InvertedResidual that expands."""
    f = model.features
    units = []
    first = f[1].conv
    if len(first) == 3:
        units.append(Unit("stem", f[0][0], f[0][1], first[0][0], first[0][1], first[1], first[2], False, None))
    for i in range(1, len(f)):
        c = getattr(f[i], "conv", None)
        if c is not None and len(c) == 4:
            units.append(Unit(f"features.{i}", c[0][0], c[0][1], c[1][0], c[1][1], c[2], c[3],
                              bool(f[i].use_res_connect), f[i]))
    return units


def _family(model: nn.Module) -> Optional[Callable[[nn.Module], List[Unit]]]:
    if hasattr(model, "_blocks") and hasattr(model, "_conv_stem"):
        return _lite_units
    if type(model).__name__ == "MobileNetV2" and hasattr(model, "features"):
        return _mobilenet_v2_units
    return None


def _well_formed(u: Unit) -> bool:
    h = u.expand.out_channels
    return (u.expand.groups == 1 and u.depthwise.groups == h == u.depthwise.in_channels == u.depthwise.out_channels
            and u.project.in_channels == h and u.project.groups == 1 and u.project.kernel_size == (1, 1)
            and u.expand_bn.num_features == h == u.depthwise_bn.num_features
            and u.project_bn.num_features == u.project.out_channels
            and all(b.affine and b.track_running_stats for b in (u.expand_bn, u.depthwise_bn, u.project_bn)))


def find_units(model: nn.Module) -> List[Unit]:
    """The model's inverted-residual units whose hidden channels can be pruned; [] for other architectures."""
    family = _family(model)
    if family is None:
        return []
    try:
        units = family(model)
    except (AttributeError, IndexError, TypeError):  # a model of that class, changed by hand
        return []
    return [u for u in units if _well_formed(u)]


def kept_count(hidden: int, ratio: float, round_to: int) -> int:
    """Hidden channels a unit keeps at ``ratio`` removed: a multiple of ``round_to``, at least one multiple."""
    k = int(round(hidden * (1 - ratio) / round_to)) * round_to
    return min(hidden, max(round_to, k))


class _Stop(Exception):
    """Raised by a capture hook once it has what it needs: the rest of the forward pass is not run."""


def _positions(batch_index: int, n: int, hw: int) -> torch.Tensor:
    """The sampled (image, y, x) positions of one batch, the same in the teacher and in the student."""
    g = torch.Generator().manual_seed(batch_index * 1_000_003 + hw)
    total = n * hw
    return torch.randperm(total, generator=g)[:ROWS_PER_BATCH] if total > ROWS_PER_BATCH else torch.arange(total)


def _rows(t: torch.Tensor, batch_index: int) -> torch.Tensor:
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(-1, c)[_positions(batch_index, n, h * w)]


@dataclass
class _Feed:
    """The network's input to ``module`` over all images, one tensor per batch, so a pass can start there: the
    layers before it see one image only (their output is replaced), which makes a block-by-block refit cost about
    one forward pass in all instead of one per block, with the same weights. The price is memory: two blocks'
    whole inputs (about 0.6 GB at most for 512 images of 224 px). ``module`` None: the images themselves.
    A fed pass must stop inside the network: a family's head may read the batch size off its input (EfficientNet-
    Lite's ``view(bs, -1)`` does), and there the input is one image. The refit's passes all stop at a block."""

    module: Optional[nn.Module]
    batches: Optional[List[torch.Tensor]]


@torch.no_grad()
def _capture(model: nn.Module, images: torch.Tensor, taps: Dict[str, tuple], stop: Optional[nn.Module] = None,
             feed: Optional[_Feed] = None, keep: Optional[nn.Module] = None) -> Tuple[Dict[str, torch.Tensor], _Feed]:
    """Sampled rows of each tap (name -> (module, "in" | "out")) over ``images``; the forward pass ends at the
    input of ``stop`` and starts from ``feed``. Also returns the whole input of ``keep``, as a feed."""
    got: Dict[str, List[torch.Tensor]] = {k: [] for k in taps}
    kept: List[torch.Tensor] = []
    state = {"batch": 0}
    hooks = []

    def hook_for(name: str, where: str):
        def pre(module, args):
            got[name].append(_rows(args[0], state["batch"]))
            if module is stop:
                raise _Stop

        def post(module, args, out):
            got[name].append(_rows(out, state["batch"]))

        return pre if where == "in" else post

    fed = feed is not None and feed.module is not None
    if fed and stop is None:
        raise ValueError("a pass fed part-way must stop inside the network (see _Feed)")
    if fed:
        hooks.append(feed.module.register_forward_pre_hook(
            lambda module, args: (feed.batches[state["batch"]],) + tuple(args[1:])))
    if keep is not None:
        hooks.append(keep.register_forward_pre_hook(lambda module, args: kept.append(args[0])))
    for name, (module, where) in taps.items():
        hooks.append(module.register_forward_pre_hook(hook_for(name, where)) if where == "in"
                     else module.register_forward_hook(hook_for(name, where)))
    try:
        for state["batch"], i in enumerate(range(0, len(images), BATCH)):
            try:
                model(images[i: i + (1 if fed else BATCH)])
            except _Stop:
                pass
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in got.items()}, _Feed(keep, kept if keep is not None else None)


def _teacher_outputs(teacher: nn.Module, images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Each unit's block output in the unpruned network (projection plus skip), at the sampled positions."""
    units = find_units(teacher)
    taps = {}
    for u in units:
        taps[u.name] = (u.project_bn, "out")
        if u.skip:
            taps[u.name + "/in"] = (u.expand, "in")
    got, _ = _capture(teacher, images, taps)
    return {u.name: got[u.name] + got[u.name + "/in"] if u.skip else got[u.name] for u in units}


def _folded_projection(u: Unit) -> torch.Tensor:
    bn = u.project_bn
    return u.project.weight[:, :, 0, 0] * (bn.weight / torch.sqrt(bn.running_var + bn.eps))[:, None]


def _keep(u: Unit, hidden: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` hidden channels that carry most energy into the block's output, in their original order."""
    importance = hidden.double().pow(2).mean(0) * _folded_projection(u).double().pow(2).sum(0)
    return importance.argsort(descending=True)[:k].sort().values


def _select(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep output channels ``keep`` of a conv (a depthwise conv keeps its inputs too) or a BatchNorm."""
    if isinstance(module, nn.BatchNorm2d):
        module.weight = nn.Parameter(module.weight.data[keep].clone())
        module.bias = nn.Parameter(module.bias.data[keep].clone())
        module.running_mean = module.running_mean[keep].clone()
        module.running_var = module.running_var[keep].clone()
        module.num_features = len(keep)
        return
    module.weight = nn.Parameter(module.weight.data[keep].clone())
    if module.bias is not None:
        module.bias = nn.Parameter(module.bias.data[keep].clone())
    module.out_channels = len(keep)
    if module.groups > 1:
        module.in_channels = module.groups = len(keep)


def _refit(u: Unit, hidden: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> float:
    """Remove the hidden channels not in ``keep`` and solve the projection (weights and bias) so that the block
    reproduces ``target`` from what is left; returns the relative squared error left."""
    k = len(keep)
    x = torch.cat([hidden[:, keep], torch.ones(len(hidden), 1)], 1).double()
    gram, rhs = x.T @ x, x.T @ target.double()
    gram.diagonal()[:k] += RIDGE * gram.diagonal()[:k].mean() + 1e-12
    w = torch.linalg.solve(gram, rhs)  # (k + 1, out): weights, then the bias
    projected = x[:, :k] @ w[:k]
    err = float((projected + w[k] - target.double()).pow(2).mean() / target.double().pow(2).mean().clamp_min(1e-12))
    for m in (u.expand, u.expand_bn, u.depthwise, u.depthwise_bn):
        _select(m, keep)
    u.project.in_channels = k
    u.project.weight = nn.Parameter(w[:k].T.float().reshape(-1, k, 1, 1).contiguous())
    if u.project.bias is not None:
        u.project.bias.data.zero_()
    # The BatchNorm after the projection becomes the bias with the statistics the new outputs really have, so that
    # distillation in train mode (batch statistics) starts from the same function.
    bn, mean, var = u.project_bn, projected.mean(0), projected.var(0, unbiased=False)
    bn.running_mean, bn.running_var = mean.float(), var.float()
    bn.weight.data = torch.sqrt(var + bn.eps).float()
    bn.bias.data = (mean + w[k]).float()
    return err


@torch.no_grad()
def prune_hidden(model: nn.Module, images, ratio: float, round_to: int = PRUNE_ROUND_TO,
                 show_progress: bool = True) -> Dict[str, float]:
    """Remove ``ratio`` of the hidden channels of every inverted-residual unit of ``model`` (in place), block by
    block, each refitted on ``images`` (N,C,H,W float32, preprocessed) to the unpruned model's outputs. Returns
    each unit's relative reconstruction error."""
    units = find_units(model)
    if not units:
        raise ValueError(f"{type(model).__name__}: no inverted-residual blocks to prune by reconstruction")
    x = torch.as_tensor(np.ascontiguousarray(images[:IMAGES]), dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        # every pass makes the same large activations; kept, they are not faulted back in each time (the Caltech
        # Lite0 at 0.3: 14 s instead of 24-28 s, most of that in the kernel; docs/benchmarks.md)
        with keep_freed_memory():
            return _prune_units(model, units, x, ratio, round_to, show_progress)
    finally:
        model.train(was_training)


def _prune_units(model: nn.Module, units: List[Unit], x: torch.Tensor, ratio: float, round_to: int,
                 show_progress: bool) -> Dict[str, float]:
    targets = _teacher_outputs(copy.deepcopy(model).eval(), x)
    errors, feed = {}, _Feed(None, None)
    for u in progress(units, desc="prune + refit blocks", show=show_progress):
        taps = {"hidden": (u.project, "in"), **({"input": (u.expand, "in")} if u.skip else {})}
        # Each pass starts at the previous unit's block (refitted by now) and keeps this unit's block input.
        got, feed = _capture(model, x, taps, stop=u.project, feed=feed, keep=u.entry)
        target = targets.pop(u.name) - got["input"] if u.skip else targets.pop(u.name)
        keep = _keep(u, got["hidden"], kept_count(u.hidden, ratio, round_to))
        errors[u.name] = _refit(u, got["hidden"], target, keep)
    return errors
