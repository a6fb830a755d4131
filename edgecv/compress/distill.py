"""Knowledge distillation: fine-tune a pruned student on the teacher's soft logits."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from edgecv.train.engine import Step, amp_dtype, amp_name, device_name, device_of, evaluate, forked_rng, grad_scaler, train_one_epoch


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, target) (Hinton et al.)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, target)


@dataclass
class DistillConfig:
    """Distillation's schedule: SGD with Nesterov momentum or AdamW, with a one-cycle learning rate; the loss's
    temperature and the weight ``alpha`` of the soft (teacher) term against the labels; ``batchnorm`` as in
    TrainConfig ("frozen": the student's BatchNorm layers keep their running statistics); ``amp``: mixed precision
    as in TrainConfig (bfloat16 on a CPU that has it), for the teacher's forward pass too. ``student_size``: the
    student sees every batch resized to this square size while the teacher sees it as loaded (a student at a lower
    input resolution learns from the teacher at full resolution); None: both see the same batch. ``device``: where
    both networks train (edgecv.train.engine.training_device: the GPU when there is one); they come back to where they
    were afterwards."""

    epochs: int = 1
    lr: float = 0.01
    temperature: float = 4.0
    alpha: float = 0.7
    weight_decay: float = 1e-4
    optimizer: str = "sgd"
    batchnorm: str = "train"
    amp: bool = False
    student_size: Optional[int] = None
    device: str = "cpu"


class AtSize(nn.Module):
    """``model`` fed its input resized (antialiased bilinear, as the bundle's preprocessing resizes) to ``size``
    x ``size``: the distilled student, when it runs at another resolution than the teacher."""

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        self.model, self.size = model, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            cl = x.is_contiguous(memory_format=torch.channels_last)
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
            x = x.contiguous(memory_format=torch.channels_last) if cl else x
        return self.model(x)


def distill(student: nn.Module, teacher: nn.Module, train_loader, val_loader, cfg: Optional[DistillConfig] = None,
            show_progress: bool = True, **fields) -> Dict:
    """Train ``student`` against ``teacher`` on ``train_loader``; return the final evaluation on ``val_loader``.
    The schedule comes as a :class:`DistillConfig`, or as its fields by name. Both networks train on ``device``
    and are back where they were when this returns, or raises; the teacher's parameters keep their
    ``requires_grad``."""
    c = replace(cfg or DistillConfig(), **fields)
    homes = [(m, device_of(m)) for m in (student, teacher)]
    grads = [(p, p.requires_grad) for p in teacher.parameters()]
    try:
        return _distill_on(student.to(c.device), teacher.to(c.device), train_loader, val_loader, c, show_progress)
    finally:
        for m, home in homes:
            m.to(home)
        for p, flag in grads:
            p.requires_grad_(flag)


def _distill_on(student: nn.Module, teacher: nn.Module, train_loader, val_loader, c: DistillConfig,
                show_progress: bool) -> Dict:
    if c.student_size:
        student = AtSize(student, c.student_size)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(output, target, images):
        with torch.no_grad(), step.autocast():
            t_logits = teacher(images).float()
        return kd_loss(output, t_logits, target, c.temperature, c.alpha)

    if c.optimizer == "adamw":
        opt = torch.optim.AdamW(student.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    else:
        opt = torch.optim.SGD(student.parameters(), lr=c.lr, momentum=0.9, nesterov=True, weight_decay=c.weight_decay)
    steps = max(1, c.epochs * len(train_loader))
    half = amp_dtype(c.device, c.amp)
    step = Step(opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c.lr, total_steps=steps, pct_start=0.1),
                device=c.device, scaler=grad_scaler(half), loss_fn=loss_fn, amp_dtype=half)
    history = []
    with forked_rng(c.device):  # repeatable epochs; the caller's generators are left as they were
        for epoch in range(c.epochs):
            torch.manual_seed(1000 + epoch)
            history.append(train_one_epoch(student, train_loader, step, epoch, show_progress, desc="distill",
                                           batchnorm=c.batchnorm, lr_field="export.distill_lr"))
        result = evaluate(student, val_loader, device=c.device, show_progress=show_progress, desc="eval student")
    result["history"] = history
    result["mixed_precision"] = amp_name(step.amp_dtype)
    result["device"] = device_name(c.device)
    return result
