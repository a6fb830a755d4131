"""``edgecv train``: the training run (single process or torchrun/DDP), resumable at epoch boundaries."""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Dict

import torch
from torch import nn

from edgecv.data.loaders import load_data
from edgecv.data.transforms import preprocess_spec
from edgecv.errors import RecipeError
from edgecv.models.checkpoint import make_checkpoint, read_checkpoint, save_checkpoint
from edgecv.models.heads import set_backbone_trainable
from edgecv.models.registry import create_model
from edgecv.recipe import Recipe, TrainConfig, save_recipe
from edgecv.train.engine import evaluate, train_one_epoch
from edgecv.utils.io import atomic_path, atomic_write_json, atomic_write_text
from edgecv.utils.outputs import run_output

log = logging.getLogger("edgecv.train")


def init_distributed() -> Dict:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPU); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return {"distributed": False, "rank": 0, "world_size": 1, "local_rank": 0}
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return {"distributed": True, "rank": dist.get_rank(), "world_size": world, "local_rank": local_rank}


def build_model(recipe: Recipe, num_classes: int) -> nn.Module:
    m = recipe.model
    return create_model(m.name, num_classes=m.num_classes or num_classes, pretrained=m.pretrained, **m.args)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on norms and biases (as torchvision's references do by default with --norm-weight-decay 0).
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def build_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Per-iteration LR: linear warm-up, then cosine / step / constant."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        if cfg.schedule == "step":
            return cfg.gamma ** (step // (cfg.step_size * steps_per_epoch))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EpochLog:
    """Appends one record per epoch as JSON lines or CSV (rank 0 only)."""

    def __init__(self, out_dir: Path, fmt: str):
        self.path = out_dir / ("log.jsonl" if fmt == "jsonl" else "log.csv")
        self.fmt = fmt

    def reset_after(self, epoch: int) -> None:
        """On resume, drop records of epochs that will be re-run."""
        if not self.path.exists():
            return
        if self.fmt == "jsonl":
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            keep = [r for r in rows if r["epoch"] <= epoch]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        else:
            with self.path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            keep = [r for r in rows if int(r["epoch"]) <= epoch]
            with atomic_path(self.path) as tmp:
                with open(tmp, "w", newline="") as f:
                    if keep:
                        w = csv.DictWriter(f, fieldnames=list(keep[0]))
                        w.writeheader()
                        w.writerows(keep)

    def write(self, record: Dict) -> None:
        if self.fmt == "jsonl":
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        else:
            new = not self.path.exists() or self.path.stat().st_size == 0
            with self.path.open("a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(record))
                if new:
                    w.writeheader()
                w.writerow(record)


def save_confusion_png(conf, classes, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    conf = np.asarray(conf, dtype=float)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(5, n * 0.6), max(4, n * 0.55)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
        for i in range(n):
            for j in range(n):
                if conf[i, j]:
                    ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def train(recipe: Recipe, out_dir: str | os.PathLike, resume: bool = False, show_progress: bool = True) -> Dict:
    """Train ``recipe``; write checkpoints, logs, metrics.json, confusion.png and recipe.yaml into ``out_dir``.

    ``out_dir`` must be new, empty, or an earlier run's directory (edgecv.utils.outputs); one run writes to
    it at a time. Nothing is written before the first epoch ends, so a run that fails early leaves nothing.
    """
    if recipe.train.epochs < 1:
        raise RecipeError(f"{recipe.source or 'recipe'}: train.epochs: must be >= 1, got {recipe.train.epochs}")
    dist_info = init_distributed()
    if dist_info["rank"] != 0:
        return _train(recipe, Path(out_dir), resume, show_progress, dist_info)
    with run_output(out_dir) as out:
        return _train(recipe, out, resume, show_progress, dist_info)


def _train(recipe: Recipe, out: Path, resume: bool, show_progress: bool, dist_info: Dict) -> Dict:
    rank0 = dist_info["rank"] == 0
    cfg = recipe.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(f"cuda:{dist_info['local_rank']}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)

    train_set, val_set, train_loader, val_loader, sampler = load_data(
        recipe.data, distributed=dist_info["distributed"], seed=cfg.seed)
    classes = list(train_set.classes)
    model = build_model(recipe, len(classes)).to(device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(train_loader))
    scaler = torch.amp.GradScaler("cuda") if (cfg.amp and device.type == "cuda") else None

    start_epoch, history = 0, []
    last = out / "last.pt"
    if resume:
        if not last.exists():
            raise FileNotFoundError(f"{last}: nothing to resume (no checkpoint in {out})")
        state = read_checkpoint(last)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"] + 1, list(state.get("history", []))
        if rank0:
            log.info("resuming %s at epoch %d", last, start_epoch)

    net, phase = model, None
    epoch_log = EpochLog(out, cfg.log_format)
    if rank0:
        epoch_log.reset_after(start_epoch - 1)
    spec = preprocess_spec(recipe.data)
    arch_args = dict(recipe.model.args)
    result: Dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        # Seed per epoch so a resumed run replays the same shuffles and augmentations.
        torch.manual_seed(cfg.seed * 1000 + epoch)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        elif getattr(sampler, "generator", None) is not None:
            sampler.generator.manual_seed(cfg.seed * 1000 + epoch)
        frozen = epoch < recipe.model.freeze_backbone_epochs
        if frozen != phase:
            set_backbone_trainable(model, not frozen)
            # DDP registers the parameters that need gradients when it is built: a wrapper built before a
            # freeze waits for gradients that never come ("Expected to have finished reduction"), and one built
            # during it would never synchronise the unfrozen backbone. So each phase gets its own wrapper.
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None) if dist_info["distributed"] \
                else model
            phase = frozen
        stats = train_one_epoch(net, train_loader, optimizer, scheduler, epoch, device=device,
                                label_smoothing=cfg.label_smoothing, scaler=scaler,
                                show_progress=show_progress and rank0)
        ev = evaluate(model, val_loader, device, show_progress=show_progress and rank0,
                      num_classes=len(classes), distributed=dist_info["distributed"])
        record = {"epoch": epoch, **{k: round(v, 6) if isinstance(v, float) else v for k, v in stats.items()},
                  "val_top1": ev["top1"], "val_top5": ev["top5"], "val_loss": round(ev["loss"], 6),
                  "backbone_frozen": frozen}
        history.append(record)
        result = ev
        if rank0:
            extra = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict() if scaler else {}, "epoch": epoch, "history": history}
            if epoch == start_epoch:
                save_recipe(recipe, out / "recipe.yaml")  # with the first checkpoint, never before
            save_checkpoint(make_checkpoint(model, recipe.model.name, arch_args, classes, spec, extra=extra), last)
            epoch_log.write(record)
            log.info("epoch %d: loss %.4f train top1 %.4f | val top1 %.4f top5 %.4f (%.0fs)", epoch,
                     stats["train_loss"], stats["train_top1"], ev["top1"], ev["top5"], stats["epoch_time_s"])
    if not result:  # resumed a finished run: evaluate the final weights again
        result = evaluate(model, val_loader, device, show_progress=False, num_classes=len(classes),
                          distributed=dist_info["distributed"])
    metrics = {"top1": result["top1"], "top5": result["top5"], "n": result["n"], "loss": result["loss"],
               "epochs": cfg.epochs, "world_size": dist_info["world_size"], "history": history}
    if rank0:
        save_checkpoint(make_checkpoint(model, recipe.model.name, arch_args, classes, spec), out / "model.pt")
        atomic_write_json(out / "metrics.json", metrics)
        save_confusion_png(result["confusion"], classes, out / "confusion.png",
                           f"{recipe.name}: top-1 {result['top1']:.4f}")
    if dist_info["distributed"]:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return metrics
