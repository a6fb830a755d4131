"""``train_one_epoch`` and ``evaluate`` (torchvision references/classification style)."""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from edgecv.metrics import topk_correct


def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1, 5)):
    """Number of correct top-k predictions for each k (k capped at the number of classes)."""
    return topk_correct(output.detach().float().cpu().numpy(), target.cpu().numpy(), topk)


def train_one_epoch(model: nn.Module, loader, optimizer, scheduler, epoch: int, *, device="cpu",
                    label_smoothing: float = 0.0, scaler=None, loss_fn: Optional[Callable] = None,
                    show_progress: bool = True, desc: str = "train") -> Dict[str, float]:
    """One pass over ``loader``; the scheduler steps per iteration (warm-up is per-iteration).

    BatchNorm layers whose parameters are all frozen stay in eval mode: a frozen backbone keeps its running
    statistics too (they would otherwise drift to the new data while its weights cannot follow).
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and \
                not any(p.requires_grad for p in m.parameters()):
            m.eval()
    n = seen = correct = 0
    loss_sum = 0.0
    t0 = time.time()
    bar = tqdm(loader, desc=f"{desc} epoch {epoch}", leave=False, disable=not show_progress, dynamic_ncols=True)
    for images, target in bar:
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with torch.autocast(device_type="cuda", enabled=scaler is not None):
            output = model(images)
            loss = loss_fn(output, target, images) if loss_fn else F.cross_entropy(
                output, target, label_smoothing=label_smoothing)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}; lower train.lr")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        b = images.shape[0]
        loss_sum += loss.item() * b
        correct += (output.argmax(1) == target).sum().item()
        seen += b
        n += 1
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}")
    return {"train_loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1),
            "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": time.time() - t0}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device="cpu", show_progress: bool = True, desc: str = "eval",
             num_classes: Optional[int] = None, distributed: bool = False,
             target_map: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Top-1/top-5 and loss over ``loader``; with ``num_classes`` also a confusion matrix.

    ``target_map`` maps the data's class indices to the model's (see edgecv.data.classes).
    """
    model.eval()
    n = c1 = c5 = 0
    loss_sum = 0.0
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long) if num_classes else None
    for images, target in tqdm(loader, desc=desc, leave=False, disable=not show_progress, dynamic_ncols=True):
        if target_map is not None:
            target = target_map[target]
        images, target = images.to(device), target.to(device)
        output = model(images).float()
        loss_sum += F.cross_entropy(output, target, reduction="sum").item()
        a1, a5 = accuracy(output, target)
        c1, c5, n = c1 + a1, c5 + a5, n + images.shape[0]
        if conf is not None:
            idx = target.cpu() * num_classes + output.argmax(1).cpu()
            conf += torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)
    if distributed:
        import torch.distributed as dist

        t = torch.tensor([n, c1, c5, loss_sum], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        n, c1, c5, loss_sum = int(t[0]), int(t[1]), int(t[2]), float(t[3])
        if conf is not None:
            conf = conf.to(device)
            dist.all_reduce(conf)
            conf = conf.cpu()
    if n == 0:
        raise ValueError("evaluation set is empty")
    out = {"top1": c1 / n, "top5": c5 / n, "loss": loss_sum / n, "n": n}
    if conf is not None:
        out["confusion"] = conf.tolist()
    return out
