"""Knowledge distillation: fine-tune a pruned student on the teacher's soft logits."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from edgecv.train.engine import evaluate, train_one_epoch


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, target) (Hinton et al.)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, target)


def distill(student: nn.Module, teacher: nn.Module, train_loader, val_loader, epochs: int, lr: float,
            temperature: float = 4.0, alpha: float = 0.7, weight_decay: float = 1e-4,
            show_progress: bool = True) -> Dict:
    """Train ``student`` for ``epochs`` with SGD + cosine LR against ``teacher``; return the final evaluation."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(output, target, images):
        with torch.no_grad():
            t_logits = teacher(images)
        return kd_loss(output, t_logits, target, temperature, alpha)

    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps = max(1, epochs * len(train_loader))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    history = []
    for epoch in range(epochs):
        torch.manual_seed(1000 + epoch)
        stats = train_one_epoch(student, train_loader, opt, sched, epoch, loss_fn=loss_fn,
                                show_progress=show_progress, desc="distill")
        history.append(stats)
    result = evaluate(student, val_loader, show_progress=show_progress, desc="eval student")
    result["history"] = history
    return result
