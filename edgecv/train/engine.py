"""``train_one_epoch`` and ``evaluate`` (torchvision references/classification style)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from edgecv.errors import DivergedError
from edgecv.metrics import topk_correct
from edgecv.utils.memory import keep_freed_memory
from edgecv.utils.progress import progress


def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1, 5)):
    """Number of correct top-k predictions for each k (k capped at the number of classes)."""
    return topk_correct(output.detach().float().cpu().numpy(), target.cpu().numpy(), topk)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere oneDNN emulates it, slower
    than fp32."""
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_avx512_bf16_supported",
                                                                      "_is_amx_tile_supported"))


def amp_dtype(device: Any, enabled: bool) -> Optional[torch.dtype]:
    """Mixed precision's autocast dtype on ``device``: float16 on a GPU (with a grad scaler), bfloat16 on a CPU that
    computes it natively, else None (fp32 throughout)."""
    if not enabled:
        return None
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.float16
    return torch.bfloat16 if kind == "cpu" and cpu_has_bf16() else None


def cannot_run_at(model: nn.Module, channels: int, size: int) -> Optional[str]:
    """Why ``model`` cannot take a ``channels`` x ``size`` x ``size`` image (PyTorch's first line: a map pooled to
    nothing, a layer of width 0, a flatten sized for another resolution), or None when one forward pass runs."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, size, size))
    except RuntimeError as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def training_device(local_rank: int = 0) -> torch.device:
    """Where training runs, the export's distillation and QAT included: this process's CUDA GPU when PyTorch sees
    one, else the CPU (``CUDA_VISIBLE_DEVICES=`` keeps a run on the CPU)."""
    return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")


def device_name(device: Any) -> str:
    """How metrics and manifests name a training device: "cpu", or "cuda:0 (NVIDIA H100 80GB HBM3)"."""
    d = torch.device(device)
    return f"{d} ({torch.cuda.get_device_name(d)})" if d.type == "cuda" else str(d)


def device_of(model: nn.Module) -> torch.device:
    """The device ``model``'s parameters are on (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def forked_rng(device: Any):
    """``torch.random.fork_rng`` over the CPU's generator and, on a GPU, that GPU's: what a seeded pass draws
    leaves the caller's generators as they were."""
    d = torch.device(device)
    return torch.random.fork_rng(devices=[d.index or 0] if d.type == "cuda" else [])


def grad_scaler(dtype: Optional[torch.dtype]):
    """AMP's gradient scaler: float16 needs one (its small gradients underflow), bfloat16 and fp32 do not."""
    return torch.amp.GradScaler("cuda") if dtype == torch.float16 else None


def amp_name(dtype: Optional[torch.dtype]) -> str:
    """How a run's metrics and manifest name its mixed precision: "bfloat16", "float16" or "off"."""
    return str(dtype).removeprefix("torch.") if dtype is not None else "off"


def to_device(images: torch.Tensor, device: Any) -> torch.Tensor:
    """A batch on ``device``; on a CPU in channels-last layout, where oneDNN's convolutions run about 1.5x faster
    than in NCHW (the model's weights follow without being converted: tools/train_speed.py)."""
    images = images.to(device, non_blocking=True)
    if images.dim() == 4 and images.device.type == "cpu":
        images = images.contiguous(memory_format=torch.channels_last)
    return images


@dataclass
class Step:
    """How one training step updates the model: the optimizer, the scheduler (stepped per iteration, so warm-up is
    per iteration), the device, label smoothing, AMP's grad scaler (float16 on a GPU), ``loss_fn(output, target,
    images)`` in place of cross-entropy (distillation's), and the autocast dtype (:func:`amp_dtype`) the forward
    pass runs in."""

    optimizer: Any
    scheduler: Any = None
    device: Any = "cpu"
    label_smoothing: float = 0.0
    scaler: Any = None
    loss_fn: Optional[Callable] = None
    amp_dtype: Optional[torch.dtype] = None

    def autocast(self):
        """The forward pass's mixed precision (a no-op without ``amp_dtype``); a ``loss_fn`` that runs a teacher
        enters it too."""
        return torch.autocast(device_type=torch.device(self.device).type, dtype=self.amp_dtype,
                              enabled=self.amp_dtype is not None)

    def loss(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor):
        with self.autocast():
            output = model(images)
        output = output.float()  # the loss in fp32, whatever the forward pass ran in
        loss = self.loss_fn(output, target, images) if self.loss_fn else F.cross_entropy(
            output, target, label_smoothing=self.label_smoothing)
        return output, loss

    def update(self, loss) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()


def freeze_frozen_batchnorm(model: nn.Module) -> None:
    """BatchNorm layers whose parameters are all frozen stay in eval mode: a frozen backbone keeps its running
    statistics too (they would otherwise drift to the new data while its weights cannot follow)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and \
                not any(p.requires_grad for p in m.parameters()):
            m.eval()


def train_one_epoch(model: nn.Module, loader, step: Step, epoch: int, show_progress: bool = True,
                    desc: str = "train", batchnorm: str = "train", lr_field: str = "train.lr") -> Dict[str, float]:
    """One pass over ``loader``, each batch one :class:`Step`. ``batchnorm="frozen"``: every BatchNorm layer uses
    and keeps its running statistics (TrainConfig.batchnorm). A loss that is not finite stops it, naming
    ``lr_field``, the setting to lower."""
    model.train()
    freeze_frozen_batchnorm(model)
    if batchnorm == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    seen = correct = 0
    loss_sum, t0 = 0.0, time.time()
    bar = progress(loader, desc=f"{desc} epoch {epoch}", show=show_progress)
    with keep_freed_memory():  # else every step page-faults its activations back in (docs/benchmarks.md)
        for images, target in bar:
            images, target = to_device(images, step.device), target.to(step.device, non_blocking=True)
            output, loss = step.loss(model, images, target)
            if not math.isfinite(loss.item()):
                raise DivergedError(f"{desc}: the loss is {loss.item()} at epoch {epoch} (it diverged); lower "
                                    f"{lr_field}")
            step.update(loss)
            b = images.shape[0]
            loss_sum += loss.item() * b
            correct += (output.argmax(1) == target).sum().item()
            seen += b
            lr = step.optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.4f}", refresh=False)
    return {"train_loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1),
            "lr": step.optimizer.param_groups[0]["lr"], "epoch_time_s": time.time() - t0}


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
    with keep_freed_memory():  # as in train_one_epoch: a batch's activations are not page-faulted back each time
        for images, target in progress(loader, desc=desc, show=show_progress):
            if target_map is not None:
                target = target_map[target]
            images, target = to_device(images, device), target.to(device)
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
