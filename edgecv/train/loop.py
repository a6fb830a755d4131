"""``edgecv train``: the training run (single process or torchrun/DDP), resumable at epoch boundaries."""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from edgecv.data.loaders import load_data, training_copies
from edgecv.data.transforms import preprocess_spec
from edgecv.errors import CheckpointError, DivergedError, ModelError, RecipeError
from edgecv.models.checkpoint import make_checkpoint, read_checkpoint, save_checkpoint
from edgecv.models.heads import set_backbone_trainable
from edgecv.models.registry import create_model
from edgecv.recipe import Recipe, TrainConfig, save_recipe
from edgecv.train.engine import amp_name, cannot_run_at, device_of, evaluate, to_device, train_one_epoch
from edgecv.train.run_dir import refuse_to_replace_a_run
from edgecv.utils.io import atomic_path, atomic_write_json, atomic_write_text
from edgecv.utils.memory import keep_freed_memory
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
    """The recipe's network for ``num_classes`` classes; refused by field, before any training, when
    ``model.num_classes`` is another count than the data's classes or it cannot run at ``data.input_size``."""
    m, where = recipe.model, recipe.source or recipe.name
    if m.num_classes and m.num_classes != num_classes:  # more outputs than names: model.pt could not be loaded
        raise RecipeError(f"{where}: model.num_classes: {m.num_classes}, but the training data has {num_classes} "
                          "classes: leave it out (the head follows the data) or point data.path at the right folder")
    try:
        model = create_model(m.name, num_classes=m.num_classes or num_classes, pretrained=m.pretrained, **m.args)
    except ModelError as e:  # the registry knows the model, the recipe knows which file and field asked for it
        raise RecipeError(f"{where}: {e}") from None
    d = recipe.data
    why = cannot_run_at(model, d.channels, d.input_size)
    if why:
        args = f" {dict(m.args)}" if m.args else ""
        raise RecipeError(f"{where}: model {m.name!r}{args} cannot run at data.input_size {d.input_size} with "
                          f"{d.channels} channel(s): {why}")
    return model


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
        """On resume, drop records of epochs that will be re-run, and any record a kill left half-written."""
        if not self.path.exists():
            return
        keep = [r for r in self._records() if r["epoch"] <= epoch]
        if self.fmt == "jsonl":
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        else:
            with atomic_path(self.path) as tmp:
                with open(tmp, "w", newline="") as f:
                    if keep:
                        w = csv.DictWriter(f, fieldnames=list(keep[0]))
                        w.writeheader()
                        w.writerows(keep)

    def _records(self) -> List[Dict]:
        """The log's records with an integer epoch; a damaged one (a line cut by a kill) is counted and dropped."""
        with self.path.open(newline="", errors="replace") as f:
            raw = list(csv.DictReader(f)) if self.fmt != "jsonl" else [line for line in f if line.strip()]
        rows, bad = [], 0
        for r in raw:
            try:
                r = json.loads(r) if self.fmt == "jsonl" else dict(r)
                rows.append({**r, "epoch": int(r["epoch"])})
            except (ValueError, TypeError, KeyError, RecursionError):
                bad += 1
        if bad:
            log.warning("%s: dropped %d damaged record(s) (a line cut short by a kill?)", self.path, bad)
        return rows

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


RUN_RECIPE = "recipe.yaml"  # the recipe a run trained with, beside its model.pt and last.pt
LABELLED_CLASSES = 30  # a confusion matrix names its classes and counts up to this many


def save_confusion_png(conf, classes, path: Path, title: str) -> None:
    """The row-normalised confusion matrix as a PNG, its size bounded whatever the number of classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    conf = np.asarray(conf, dtype=float)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    n = len(classes)
    # Labelled cells need room; past LABELLED_CLASSES a cell is a pixel or two, and a figure grown with n would
    # not fit in memory (1,000 classes: 600 x 550 inches, 16 GB of pixels).
    w, h = (max(5, n * 0.6), max(4, n * 0.55)) if n <= LABELLED_CLASSES else (14, 12.5)
    fig, ax = plt.subplots(figsize=(w, h))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= LABELLED_CLASSES:
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


def train(recipe: Recipe, out_dir: str | os.PathLike, resume: bool = False, show_progress: bool = True,
          force: bool = False) -> Dict:
    """Train ``recipe``; write checkpoints, logs, metrics.json, confusion.png and recipe.yaml into ``out_dir``.

    ``out_dir`` must be new, empty, or an earlier run's directory (edgecv.utils.outputs); one run writes to
    it at a time. Nothing is written before the first epoch ends, so a run that fails early leaves nothing.
    An earlier run there is continued (``resume``) or replaced only when ``force`` says so
    (``refuse_to_replace_a_run``).
    """
    if recipe.train.epochs < 1:
        raise RecipeError(f"{recipe.source or 'recipe'}: train.epochs: must be >= 1, got {recipe.train.epochs}")
    dist_info = init_distributed()
    if dist_info["rank"] != 0:
        return _train(recipe, Path(out_dir), resume, show_progress, dist_info)
    with run_output(out_dir) as out:
        if not resume and not force:  # under the lock: a run writing there now is named as such instead
            refuse_to_replace_a_run(out, recipe)
        return _train(recipe, out, resume, show_progress, dist_info)


@dataclass
class _Run:
    """One training run: what its epochs share."""

    recipe: Recipe
    out: Path
    dist_info: Dict
    show_progress: bool
    device: Any = None
    model: Any = None
    step: Any = None  # edgecv.train.engine.Step
    loaders: Tuple = ()  # (train, val, sampler)
    classes: List[str] = field(default_factory=list)
    start_epoch: int = 0
    history: List[Dict] = field(default_factory=list)

    @property
    def rank0(self) -> bool:
        return self.dist_info["rank"] == 0

    def checkpoint(self, extra: Optional[Dict] = None) -> Dict:
        return make_checkpoint(self.model, self.recipe.model.name, dict(self.recipe.model.args), self.classes,
                               preprocess_spec(self.recipe.data), extra=extra)


def _setup(recipe: Recipe, out: Path, show_progress: bool, dist_info: Dict) -> _Run:
    from edgecv.train.engine import Step, amp_dtype, grad_scaler, training_device

    cfg = recipe.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    r = _Run(recipe, out, dist_info, show_progress)
    r.device = training_device(dist_info["local_rank"])
    torch.manual_seed(cfg.seed)
    train_set, _, train_loader, val_loader, sampler = load_data(recipe.data, distributed=dist_info["distributed"],
                                                                seed=cfg.seed)
    r.classes, r.loaders = list(train_set.classes), (train_loader, val_loader, sampler)
    r.model = build_model(recipe, len(r.classes)).to(r.device)
    optimizer = build_optimizer(r.model, cfg)
    half = amp_dtype(r.device, cfg.amp)
    r.step = Step(optimizer, build_scheduler(optimizer, cfg, len(train_loader)), r.device, cfg.label_smoothing,
                  grad_scaler(half), amp_dtype=half)
    return r


def _resume(r: _Run) -> None:
    last = r.out / "last.pt"
    if not last.exists():
        raise FileNotFoundError(f"{last}: nothing to resume (no checkpoint in {r.out})")
    state = read_checkpoint(last)
    try:
        r.model.load_state_dict(state["state_dict"])
        r.step.optimizer.load_state_dict(state["optimizer"])
        r.step.scheduler.load_state_dict(state["scheduler"])
        if r.step.scaler is not None and state.get("scaler"):
            r.step.scaler.load_state_dict(state["scaler"])
    except (RuntimeError, KeyError, ValueError) as e:  # another architecture, width, optimizer or schedule
        lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.strip().endswith(":")]
        first = lines[0] if lines else type(e).__name__  # torch's first line is a heading ending in ':'
        raise CheckpointError(f"{last}: was saved by a different model or schedule than this recipe describes "
                              f"({first[:300]}); --resume needs the recipe the run started with "
                              f"({r.out / RUN_RECIPE})") from None
    r.start_epoch, r.history = state["epoch"] + 1, list(state.get("history", []))
    if r.rank0:
        log.info("resuming %s at epoch %d", last, r.start_epoch)


def _seed_epoch(r: _Run, epoch: int) -> None:
    """Seed per epoch so a resumed run replays the same shuffles and augmentations."""
    seed = r.recipe.train.seed * 1000 + epoch
    torch.manual_seed(seed)
    sampler = r.loaders[2]
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    elif getattr(sampler, "generator", None) is not None:
        sampler.generator.manual_seed(seed)


def _wrapper(r: _Run, frozen: bool):
    """The model to train in this phase: the backbone frozen or not. DDP registers the parameters that need
    gradients when it is built: a wrapper built before a freeze waits for gradients that never come ("Expected to
    have finished reduction"), and one built during it would never synchronise the unfrozen backbone. So each
    phase gets its own wrapper."""
    set_backbone_trainable(r.model, not frozen)
    if not r.dist_info["distributed"]:
        return r.model
    return nn.parallel.DistributedDataParallel(r.model, device_ids=[r.device.index] if r.device.type == "cuda" else None)


def _epoch(r: _Run, epoch: int, net, epoch_log) -> Dict:
    """Train one epoch, evaluate, checkpoint (rank 0): the evaluation."""
    frozen = epoch < r.recipe.model.freeze_backbone_epochs
    stats = train_one_epoch(net, r.loaders[0], r.step, epoch, r.show_progress and r.rank0,
                            batchnorm=r.recipe.train.batchnorm)
    ev = evaluate(r.model, r.loaders[1], r.device, show_progress=r.show_progress and r.rank0,
                  num_classes=len(r.classes), distributed=r.dist_info["distributed"])
    record = {"epoch": epoch, **{k: round(v, 6) if isinstance(v, float) else v for k, v in stats.items()},
              "val_top1": ev["top1"], "val_top5": ev["top5"], "val_loss": round(ev["loss"], 6), "backbone_frozen": frozen}
    r.history.append(record)
    if r.rank0:
        step = r.step
        extra = {"optimizer": step.optimizer.state_dict(), "scheduler": step.scheduler.state_dict(),
                 "scaler": step.scaler.state_dict() if step.scaler else {}, "epoch": epoch, "history": r.history}
        if epoch == r.start_epoch:
            save_recipe(r.recipe, r.out / RUN_RECIPE)  # with the first checkpoint, never before
        save_checkpoint(r.checkpoint(extra), r.out / "last.pt")
        epoch_log.write(record)
        log.info("epoch %d: loss %.4f train top1 %.4f | val top1 %.4f top5 %.4f (%.0fs)", epoch, stats["train_loss"],
                 stats["train_top1"], ev["top1"], ev["top5"], stats["epoch_time_s"])
    return ev


@torch.no_grad()
def _features(model: nn.Module, dataset, batch: int, desc: str, show_progress: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(features before the head, labels) of every image of ``dataset``, the model in eval mode."""
    from edgecv.models.heads import find_head
    from edgecv.utils.progress import progress

    name, head = find_head(model)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Identity())
    model.eval()
    device = device_of(model)
    feats, labels = [], []
    try:
        loader = torch.utils.data.DataLoader(dataset, batch, shuffle=False)
        with keep_freed_memory():  # as in train.engine's loops: each batch's activations are not faulted back in
            for x, y in progress(loader, desc=desc, show=show_progress):
                feats.append(model(to_device(x, device)).flatten(1))
                labels.append(torch.as_tensor(y).to(device))
    finally:
        setattr(parent, name.rsplit(".", 1)[-1], head)
    return torch.cat(feats), torch.cat(labels)


def _fit_head(r: _Run) -> Dict:
    """The head alone on features of the frozen backbone, computed once over the training images (no augmentation):
    a linear classifier in seconds, before the whole network is fine-tuned."""
    from edgecv.data.loaders import build_dataset
    from edgecv.models.heads import find_head

    cfg, t0 = r.recipe.train, time.time()
    batch, show = r.recipe.data.eval_batch_size, r.show_progress and r.rank0
    fx, fy = _features(r.model, build_dataset(r.recipe.data, "train", train_aug=False), batch,
                       "head: train features", show)
    vx, vy = _features(r.model, r.loaders[1].dataset, batch, "head: val features", show)
    head = find_head(r.model)[1]
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.head_epochs):
        for idx in torch.randperm(len(fy), generator=gen).split(256):
            loss = nn.functional.cross_entropy(head(fx[idx]), fy[idx], label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise DivergedError(f"head: the loss is {loss.item()} (it diverged); lower train.head_lr "
                                    f"(now {cfg.head_lr:g})")
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        rec = {"phase": "head (cached features)", "epochs": cfg.head_epochs,
               "train_top1": float((head(fx).argmax(1) == fy).float().mean()),
               "val_top1": float((head(vx).argmax(1) == vy).float().mean()), "seconds": round(time.time() - t0, 1)}
    if r.rank0:
        log.info("head on cached features: train top1 %.4f, val top1 %.4f (%.0fs)", rec["train_top1"],
                 rec["val_top1"], rec["seconds"])
    return rec


def _train(recipe: Recipe, out: Path, resume: bool, show_progress: bool, dist_info: Dict) -> Dict:
    r = _setup(recipe, out, show_progress, dist_info)
    if resume:
        _resume(r)
    elif recipe.train.head_epochs:
        r.history.append(_fit_head(r))
    epoch_log = EpochLog(out, recipe.train.log_format)
    if r.rank0:
        epoch_log.reset_after(r.start_epoch - 1)
    net, phase, result = r.model, None, {}
    for epoch in range(r.start_epoch, recipe.train.epochs):
        _seed_epoch(r, epoch)
        frozen = epoch < recipe.model.freeze_backbone_epochs
        if frozen != phase:
            net, phase = _wrapper(r, frozen), frozen
        result = _epoch(r, epoch, net, epoch_log)
    if not result:  # resumed a finished run: evaluate the final weights again
        result = evaluate(r.model, r.loaders[1], r.device, show_progress=False, num_classes=len(r.classes),
                          distributed=dist_info["distributed"])
    return _finish(r, result)


def _finish(r: _Run, result: Dict) -> Dict:
    metrics = {"top1": result["top1"], "top5": result["top5"], "n": result["n"], "loss": result["loss"],
               "epochs": r.recipe.train.epochs, "world_size": r.dist_info["world_size"], "history": r.history,
               "mixed_precision": amp_name(r.step.amp_dtype),
               "val_copies_of_training_left_out": training_copies(r.loaders[1].dataset)}
    if r.rank0:
        save_checkpoint(r.checkpoint(), r.out / "model.pt")
        atomic_write_json(r.out / "metrics.json", metrics)
        try:
            save_confusion_png(result["confusion"], r.classes, r.out / "confusion.png",
                               f"{r.recipe.name}: top-1 {result['top1']:.4f}")
        except (ValueError, TypeError, RuntimeError) as e:  # a picture must not fail a trained, saved run
            log.warning("%s: not drawn (%s: %s); model.pt and metrics.json are written", r.out / "confusion.png",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    if r.dist_info["distributed"]:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return metrics
