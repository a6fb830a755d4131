"""Block-wise reconstruction of a fake-quantized network: the QAT rung's training where the network splits into
blocks (BRECQ, Li et al. 2021; QDrop, Wei et al. 2022).

The network is cut into units that run one after another (the stem, each block, the head with the classifier).
Unit by unit, the fake-quantized copy's weights and BatchNorm parameters are fitted by Adam to the fp32 unit's
output on the calibration images, given as input what the already fitted quantized units before it give; a share
of each batch (``qdrop``) sees the fp32 input instead, so each unit is fitted to both. Each step costs one unit's
pass, not the whole network's, and the target is the fp32 unit's own output rather than the last layer's logits:
on EfficientNet-Lite0 it lifted agreement with fp32 further on 512 images than end-to-end distillation on 1,000 to
6,000 (docs/int8.md, tools/block_reconstruction.py).

A family's units are checked before use: run in a chain they must give the model's own output, else the network
is not cut (``units`` returns None) and the caller trains end to end instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecv.errors import DivergedError

Unit = Tuple[Callable[[torch.Tensor], torch.Tensor], List[nn.Module]]  # (forward, modules whose parameters fit)


@dataclass
class BlockConfig:
    """Adam ``steps`` of ``batch`` images per unit at ``lr`` (cosine-decayed), ``qdrop`` the share of each batch
    given the fp32 input, on ``device``; ``seed`` draws the batches."""

    steps: int = 60
    lr: float = 5e-5
    batch: int = 32
    qdrop: float = 0.5
    seed: int = 0
    device: str = "cpu"


def _lite(m: nn.Module) -> List[Unit]:
    """EfficientNet-Lite (efficientnet_lite_pytorch): stem, each block, head (pooling, dropout off, classifier)."""
    def stem(x):
        return m._swish(m._bn0(m._conv_stem(x)))

    def head(x):
        return m._fc(m._avg_pooling(m._swish(m._bn1(m._conv_head(x)))).flatten(1))

    return [(stem, [m._conv_stem, m._bn0])] + [(b, [b]) for b in m._blocks] + [(head, [m._conv_head, m._bn1, m._fc])]


def _resnet(m: nn.Module) -> List[Unit]:
    """torchvision's ResNet: stem (with the max-pool), each residual block, head."""
    def stem(x):
        return m.maxpool(m.relu(m.bn1(m.conv1(x))))

    def head(x):
        return m.fc(torch.flatten(m.avgpool(x), 1))

    blocks = [b for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer]
    return [(stem, [m.conv1, m.bn1])] + [(b, [b]) for b in blocks] + [(head, [m.fc])]


def _features_heads(m: nn.Module) -> List[List[Unit]]:
    """``features`` (a Sequential) then ``classifier``: each feature stage a unit, and the head as each of the forms
    such models take (their pooling module, global average pooling, or the classifier alone); the check keeps the
    one that gives the model's output."""
    pool = getattr(m, "avgpool", None) or getattr(m, "pool", None)
    heads = [lambda x: m.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)), m.classifier]
    if isinstance(pool, nn.Module):
        heads.insert(0, lambda x: m.classifier(torch.flatten(pool(x), 1)))
    return [_merge_free(m.features) + [(h, [m.classifier])] for h in heads]


def _merge_free(features: nn.Sequential) -> List[Unit]:
    """Each stage with parameters a unit; a stage without (a pooling) joins the unit before it."""
    units: List[Unit] = []
    for s in features:
        if any(True for _ in s.parameters()) or not units:
            units.append((s, [s]))
        else:
            prev = units[-1][0]
            units[-1] = ((lambda x, prev=prev, s=s: s(prev(x))), units[-1][1])
    return units


def _candidates(m: nn.Module) -> List[List[Unit]]:
    if hasattr(m, "_blocks") and hasattr(m, "_conv_stem"):
        return [_lite(m)]
    if all(hasattr(m, a) for a in ("conv1", "layer1", "layer4", "fc")):
        return [_resnet(m)]
    if isinstance(getattr(m, "features", None), nn.Sequential) and isinstance(getattr(m, "classifier", None),
                                                                               nn.Module):
        return _features_heads(m)
    return []


@torch.no_grad()
def units(model: nn.Module, x: torch.Tensor) -> Optional[List[Unit]]:
    """``model`` (in eval mode) cut into units whose chain gives its own output on the images ``x``; None when its
    family is not known or no cut does (a model changed by hand)."""
    for cut in _candidates(model):
        try:
            y = x
            for fn, _ in cut:
                y = fn(y)
            if y.shape == (ref := model(x)).shape and torch.allclose(y, ref, rtol=1e-4, atol=1e-5):
                return cut
        except (AttributeError, RuntimeError, TypeError, ValueError):
            continue
    return None


def _run(fn, x: torch.Tensor, device: str, batch: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return _cl(torch.cat([fn(_cl(x[i: i + batch].to(device))).cpu() for i in range(0, len(x), batch)]))


def _fit(q_fn, params, xq, xf, target, c: BlockConfig, gen: torch.Generator) -> Tuple[float, float]:
    """Adam on one unit; the loss (MSE to the fp32 unit's output) of its first and last batch."""
    opt = torch.optim.Adam(params, lr=c.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, c.steps)
    first = last = float("nan")
    for step in range(c.steps):
        idx = torch.randint(0, len(xq), (min(c.batch, len(xq)),), generator=gen)
        xin = xq[idx]
        if c.qdrop > 0:
            fp_input = (torch.rand(len(idx), generator=gen) < c.qdrop).view(-1, *([1] * (xin.dim() - 1)))
            xin = torch.where(fp_input, xf[idx], xin)
        loss = F.mse_loss(q_fn(_cl(xin.to(c.device))), target[idx].to(c.device))
        if not torch.isfinite(loss):
            raise DivergedError(f"block reconstruction: the loss is {loss.item()} (it diverged) at lr {c.lr:g}")
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        last = loss.item()
        first = last if step == 0 else first
    return first, last


def reconstruct(fp: nn.Module, q: nn.Module, images: np.ndarray, cfg: Optional[BlockConfig] = None,
                show_progress: bool = True) -> Optional[List[dict]]:
    """Fit ``q`` (``edgecv.compress.qat.prepare_qat(fp, ...)``, in place) to ``fp`` unit by unit on ``images``
    (N,C,H,W float32, preprocessed). Returns per unit the loss of its first and last batch (a trace, not a
    measurement) and the seconds so far; None, with ``q`` untouched, when the network cannot be cut into units.
    Both models are left in eval mode (BatchNorm statistics and dropout as deployed), where they were."""
    from edgecv.train.engine import device_of
    from edgecv.utils.memory import keep_freed_memory

    c = cfg or BlockConfig()
    fp, q = fp.eval(), q.eval()
    x = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32)
    homes = [(m, device_of(m)) for m in (fp, q)]
    try:
        # channels-last: oneDNN's convolutions, forward and backward, ran 1.34x faster so on a 2-core EPYC (Lite0)
        fp.to(c.device, memory_format=torch.channels_last), q.to(c.device, memory_format=torch.channels_last)
        cut_fp, cut_q = units(fp, _cl(x[:2].to(c.device))), units(q, _cl(x[:2].to(c.device)))
        if cut_fp is None or cut_q is None or len(cut_fp) != len(cut_q):
            return None
        with keep_freed_memory():
            return _reconstruct_units(cut_fp, cut_q, x, c, show_progress)
    finally:
        for m, home in homes:
            m.to(home, memory_format=torch.contiguous_format)


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _reconstruct_units(cut_fp: List[Unit], cut_q: List[Unit], x: torch.Tensor, c: BlockConfig,
                       show_progress: bool) -> List[dict]:
    from edgecv.utils.progress import progress

    gen = torch.Generator().manual_seed(c.seed)
    xf = xq = x
    trace, t0 = [], time.perf_counter()
    for k, ((f_fn, _), (q_fn, mods)) in enumerate(progress(list(zip(cut_fp, cut_q)), desc="reconstruct blocks",
                                                            show=show_progress)):
        target = _run(f_fn, xf, c.device)
        params = [p for mod in mods for p in mod.parameters() if p.requires_grad]
        first, last = _fit(q_fn, params, xq, xf, target, c, gen)
        xq, xf = _run(q_fn, xq, c.device), target
        trace.append({"unit": k, "first_loss": first, "last_loss": last,
                      "elapsed_s": round(time.perf_counter() - t0, 1)})
    return trace
