"""Quantization-aware fine-tuning: the rung after post-training quantization and per-layer fallback.

Every Conv2d and Linear quantizes its input per tensor and its weight per output channel (axis 0), both
symmetric with zero-point 0 (signed int8, scale = amax / 127): TensorRT's explicit int8 rules, with the Q/DQ
placement NVIDIA Model Optimizer uses (inputs of weighted layers). Activation amax comes from calibration (a high
percentile of |x|) and stays fixed; the weights train through the straight-through estimator by distillation from
the fp32 model on unlabelled images (no labels needed), with BatchNorm statistics frozen, so the int8 model learns
to answer like fp32. The fine-tuned weights then go through the export's usual quantization for every target,
without bias correction (it would undo the rounding QAT trained for): per-channel weight scales are the same
max|w| / 127 there, so what was trained is what ships.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecv.errors import DivergedError
from edgecv.train.engine import device_of, forked_rng, to_device

log = logging.getLogger("edgecv.qat")


class WeightFakeQuant(nn.Module):
    """A parametrization of a Conv/Linear weight: per-output-channel (axis 0) symmetric int8, scale = max|w| / 127
    per channel, recomputed as the weight trains (per-channel scales make it indifferent to a BatchNorm folded
    into the weight later)."""

    def forward(self, w):
        amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-8)
        return torch.fake_quantize_per_channel_affine(w, amax / 127.0, torch.zeros_like(amax, dtype=torch.int32),
                                                      0, -128, 127)


def _input_quant_hook(scale: float):
    def hook(mod, args):
        return (torch.fake_quantize_per_tensor_affine(args[0], scale, 0, -128, 127),) + tuple(args[1:])
    hook.edgecv_qat = True  # strip_fake_quant removes these and no one else's hooks
    return hook


def weighted_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """Every Conv2d and Linear by module name (subclasses too: EfficientNet's static-padding convolutions)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def input_amax(model: nn.Module, x: np.ndarray, percentile: float = 99.99, batch: int = 32) -> Dict[str, float]:
    """Per Conv2d/Linear (by module name): a high percentile of |input| over the calibration images."""
    samples: Dict[str, List[np.ndarray]] = {}
    hooks = []
    for name, m in weighted_layers(model).items():
        def hook(mod, inp, out, name=name):
            a = inp[0].detach().abs().flatten().numpy()
            step = max(1, a.size // 20000)  # a subsample per batch keeps memory flat
            samples.setdefault(name, []).append(a[::step])
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                model(torch.from_numpy(x[i: i + batch]))
    finally:
        for h in hooks:
            h.remove()
    return {k: float(np.percentile(np.concatenate(v), percentile)) for k, v in samples.items()}


def prepare_qat(model: nn.Module, calib_x: np.ndarray, percentile: float = 99.99) -> nn.Module:
    """A copy whose Conv2d/Linear layers fake-quantize their input (per tensor, amax from calibration) and their
    weight (per output channel), as TensorRT's explicit int8 will run them. The layers' own forward is kept
    (padding and all); the quantization is a weight parametrization and an input pre-hook."""
    from torch.nn.utils import parametrize

    q = copy.deepcopy(model).eval()
    amax = input_amax(q, calib_x, percentile)
    q._edgecv_input_amax = amax
    for name, m in weighted_layers(q).items():
        parametrize.register_parametrization(m, "weight", WeightFakeQuant())
        m.register_forward_pre_hook(_input_quant_hook(max(amax[name], 1e-8) / 127.0))
    return q


@dataclass
class QatResult:
    epochs: int
    steps: int
    lr: float
    history: List[Dict]
    kept_epoch: Optional[int] = None  # with ``keep_best``: the epoch whose weights the student ends with


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Horizontal flips and small shifts: more distinct views of the few unlabelled calibration images."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    dy, dx = (int(v) for v in torch.randint(-8, 9, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@dataclass
class FinetuneConfig:
    """Quantization-aware distillation's schedule: epochs of SGD at ``lr`` in batches of ``batch``, the distillation
    temperature, the seed of the shuffles and augmentations, and the ``device`` both networks train on
    (edgecv.train.engine.training_device: the GPU when there is one)."""

    epochs: int = 2
    lr: float = 1e-4
    batch: int = 16
    temperature: float = 1.0
    seed: int = 0
    device: str = "cpu"
    # a key of ``check``'s record to maximise: the student ends with the weights of the epoch that scored highest
    # (ties go to the later epoch), not those of the last one (Lite0: an epoch can lower agreement)
    keep_best: Optional[str] = None


def _batches(data, batch: int, gen: torch.Generator):
    """Shuffled batches of the images: an array (augmented here by flips and shifts) or a Dataset of ``(image,
    label)`` whose own transform augments (the pooled photographs' random resized crops)."""
    if isinstance(data, np.ndarray):
        x = torch.from_numpy(data)
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            yield augment(x[order[i: i + batch]], gen)
        return
    loader = torch.utils.data.DataLoader(data, batch, shuffle=True, generator=gen, drop_last=False)
    for xb, _ in loader:
        yield xb


def _epoch(student: nn.Module, teacher: nn.Module, batches, opt, c: FinetuneConfig) -> tuple:
    """One pass of distillation: (summed KL, images, steps)."""
    total, n, steps = 0.0, 0, 0
    for xb in batches:
        xb = to_device(xb, c.device)
        with torch.no_grad():
            t = F.log_softmax(teacher(xb) / c.temperature, 1)
        s = F.log_softmax(student(xb) / c.temperature, 1)
        loss = F.kl_div(s, t, log_target=True, reduction="batchmean") * c.temperature ** 2
        if not torch.isfinite(loss):
            raise DivergedError(f"QAT: the loss is {loss.item()} (it diverged); lower export.qat_lr "
                                f"(now {opt.param_groups[0]['lr']:g})")
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, n, steps = total + float(loss.detach()) * len(xb), n + len(xb), steps + 1
    return total, n, steps


def _better(best: Optional[tuple], rec: Dict, key: str, epoch: int, student: nn.Module) -> tuple:
    """``(score, epoch, weights)`` of the best epoch so far, this one included (a tie goes to this, later, one)."""
    if key not in rec:
        raise ValueError(f"keep_best: the check's record has no {key!r} (it has {', '.join(rec)})")
    if best is None or rec[key] >= best[0]:
        return rec[key], epoch, copy.deepcopy(student.state_dict())
    return best


def finetune(student: nn.Module, teacher: nn.Module, x, cfg: Optional[FinetuneConfig] = None,
             check: Optional[Callable[[nn.Module], Dict]] = None, show_progress: bool = True, **fields) -> QatResult:
    """Distil ``teacher`` (fp32) into the fake-quantized ``student`` on the unlabelled images ``x`` (an array of
    inputs, or a Dataset of augmented views); ``check`` (called after each epoch) reports fidelity on images the
    training never saw. The schedule comes as a :class:`FinetuneConfig`, or as its fields by name. The same seed
    gives the same weights: a Dataset's random transforms draw from torch's global generator, which is seeded here
    and restored afterwards. Both networks train on the config's ``device`` (``check`` gets the student there) and
    are back where they were when this returns, or raises."""
    c = replace(cfg or FinetuneConfig(), **fields)
    if c.keep_best and check is None:
        raise ValueError("keep_best needs a check that scores each epoch")
    homes = [(m, device_of(m)) for m in (student, teacher)]
    try:
        return _finetune_on(student.to(c.device), teacher.to(c.device), x, c, check, show_progress)
    finally:
        for m, home in homes:
            m.to(home)


def _finetune_on(student: nn.Module, teacher: nn.Module, x, c: FinetuneConfig, check, show_progress: bool) -> QatResult:
    from edgecv.utils.progress import progress

    teacher = teacher.eval()
    # eval mode while training: BatchNorm statistics stay frozen (a few hundred images must not re-estimate them)
    # and dropout / drop-connect stay off, so the student is pulled toward what the deployed int8 model computes
    student.eval()
    # SGD, not Adam: its steps shrink with the gradient, and the student starts close to the teacher (Adam's
    # normalised steps of size lr knocked a near-perfect int8 model far off on the first epoch)
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=c.lr, momentum=0.9)
    gen = torch.Generator().manual_seed(c.seed)
    history, steps = [], 0
    best = None  # (score, epoch, weights)
    with forked_rng(c.device):
        torch.manual_seed(c.seed)
        for epoch in range(c.epochs):
            batches = progress(_batches(x, c.batch, gen), total=(len(x) + c.batch - 1) // c.batch,
                               desc=f"QAT epoch {epoch + 1}/{c.epochs}", show=show_progress)
            total, n, k = _epoch(student, teacher, batches, opt, c)
            steps += k
            rec = {"epoch": epoch + 1, "kl": total / max(n, 1)}
            if check is not None:
                rec.update(check(student))
            log.info("QAT epoch %d: %s", epoch + 1, rec)
            history.append(rec)
            if c.keep_best:
                best = _better(best, rec, c.keep_best, epoch + 1, student)
    student.eval()
    if best is None:
        return QatResult(c.epochs, steps, c.lr, history)
    if best[1] != c.epochs:
        student.load_state_dict(best[2])
        log.info("QAT: keeping epoch %d's weights (%s %.4f)", best[1], c.keep_best, best[0])
    return QatResult(c.epochs, steps, c.lr, history, kept_epoch=best[1])


def strip_fake_quant(student: nn.Module) -> nn.Module:
    """The fine-tuned float model (fake quantization removed, the trained weights kept): what every target's
    int8 artefact is then calibrated and quantized from."""
    from torch.nn.utils import parametrize

    plain = copy.deepcopy(student)
    for m in weighted_layers(plain).values():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        for key, hook in list(m._forward_pre_hooks.items()):
            if getattr(hook, "edgecv_qat", False):
                del m._forward_pre_hooks[key]
    if hasattr(plain, "_edgecv_input_amax"):
        del plain._edgecv_input_amax
    return plain.eval()
