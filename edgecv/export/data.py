"""Calibration and evaluation images for export, as float32 arrays, kept disjoint."""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from typing import List, Optional, Set, Tuple

import numpy as np
import torch

from edgecv.data.loaders import ImageFileDataset, build_dataset, content_hash, dataset_for_path, training_copies, training_identities
from edgecv.errors import DatasetError
from edgecv.recipe import DataConfig
from edgecv.utils.progress import progress
from edgecv.utils.sampling import evenly_spaced

log = logging.getLogger("edgecv.export")


@dataclass
class ArraySet:
    x: np.ndarray
    y: np.ndarray
    paths: List[str]
    source: str
    ids: List[str] = field(default_factory=list)  # content identities (sample_identity)
    classes: List[str] = field(default_factory=list)  # class names of the labels in ``y``
    excluded_overlap: int = 0  # images left out because the other set holds them
    origins: List[str] = field(default_factory=list)  # pooled images: the pool folder each came from
    training_copies: int = 0  # held-out images left out as copies of training images (data.loaders)

    def record(self) -> dict:
        """Size and member-list hash, for the manifest."""
        return {"source": self.source, "images": len(self), "members_sha256": members_digest(self.ids)}

    def __len__(self) -> int:
        return len(self.y)


def _files(ds) -> Optional[List[str]]:
    return [p for p, _ in ds.samples] if isinstance(ds, ImageFileDataset) else None


def sample_identity(ds, i: int) -> str:
    """sha256 of sample ``i``'s stored bytes: the same image under another path, spelling, symlink or
    split (a copied file, a duplicate array image) has the same identity."""
    from edgecv.utils.io import sha256_array

    if isinstance(ds, ImageFileDataset):
        try:
            return content_hash(ds.samples[i][0])
        except OSError:
            return "unreadable:" + os.path.realpath(ds.samples[i][0])
    return sha256_array(ds.images[i].numpy())


def members_digest(ids: List[str]) -> str:
    """One hash for a split's member list (order-independent), recorded in the manifest."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def materialise(ds, indices, desc: str, show_progress: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Samples ``indices`` of ``ds`` as one float32 array and their labels; refused before reading them all when
    they would not fit in memory (an ``--input-size`` or ``data.input_size`` with a zero too many)."""
    indices = list(indices)
    xs, ys = [], []
    for i in progress(indices, desc=desc, show=show_progress):
        x, y = ds[i]
        xs.append(x.numpy() if torch.is_tensor(x) else x)
        ys.append(y)
        if len(xs) == 1:
            _check_fits(desc, len(indices), xs[0])
    return np.stack(xs).astype(np.float32), np.asarray(ys, dtype=np.int64)


def _check_fits(desc: str, n: int, first: np.ndarray) -> None:
    from edgecv.utils.limits import available_memory

    need, free = 2 * n * first.size * 4, available_memory()  # the list of images and the stacked array
    if free is not None and need > free:
        raise DatasetError(f"{desc}: {n} images of {' x '.join(map(str, first.shape))} float32 need "
                           f"{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB of memory available: lower "
                           "--input-size (or the recipe's data.input_size), or the number of images "
                           "(export.eval_limit, --calib-samples)")


def evaluation_images(cfg: DataConfig, eval_path: Optional[str], limit: Optional[int], exclude: Set[str] = frozenset(),
                      show_progress: bool = True) -> ArraySet:
    """The labelled held-out images (``eval_path`` or the recipe's held-out split), leaving out any image whose
    content is in ``exclude`` (calibration images) or is one of the recipe's training images."""
    ev_ds = dataset_for_path(eval_path, cfg) if eval_path else build_dataset(cfg, "val")
    # the held-out split has none already (data.loaders); a folder named by --eval may hold the training images
    trained = training_identities(cfg) if eval_path else set()
    ev_files = _files(ev_ds)
    ev_idx, ev_ids, overlap, copies = [], [], 0, training_copies(ev_ds)
    n = len(ev_ds)
    # a folder lists its images class by class: a limit takes them spread over it, then any others in its place
    spread = evenly_spaced(n, limit or n)
    for i in spread + sorted(set(range(n)) - set(spread)):
        if limit and len(ev_idx) >= limit:
            break
        ident = sample_identity(ev_ds, i)
        if ident in exclude:
            overlap += 1
            continue
        if ident in trained:
            copies += 1
            continue
        ev_idx.append(i)
        ev_ids.append(ident)
    order = np.argsort(ev_idx, kind="stable")  # in the data's own order, as before
    ev_idx, ev_ids = [ev_idx[k] for k in order], [ev_ids[k] for k in order]
    if not ev_idx:
        raise DatasetError(f"{eval_path or cfg.path}: every evaluation image is also a calibration or a training "
                           "image; lower --calib-samples or pass a separate --eval folder")
    if copies > training_copies(ev_ds):
        log.warning("%d evaluation image(s) are copies of the recipe's training images: left out of the "
                    "evaluation", copies)
    if overlap:
        log.warning("%d evaluation image(s) are also calibration images: left out of the evaluation", overlap)
    ex, ey = materialise(ev_ds, ev_idx, "evaluation images", show_progress)
    if (ey < 0).all():
        raise DatasetError(f"{eval_path or cfg.path}: evaluation images have no labels "
                           "(use an ImageFolder tree or a folder with classes.tsv)")
    return ArraySet(ex, ey, [ev_files[i] for i in ev_idx] if ev_files else [], str(eval_path or cfg.val_path or cfg.path), ev_ids,
                    list(getattr(ev_ds, "classes", []) or []), overlap,
                    training_copies=copies)


def calib_and_eval_sets(cfg: DataConfig, calib: Optional[str], eval_path: Optional[str], calib_samples: int,
                        eval_limit: Optional[int], seed: int = 0,
                        show_progress: bool = True) -> Tuple[ArraySet, ArraySet]:
    """Pick ``calib_samples`` calibration images (``calib`` folder or the recipe's training split) and the
    evaluation set (``eval_path`` or the recipe's held-out split), with no image in both."""
    cal_ds = dataset_for_path(calib, cfg) if calib else build_dataset(cfg, "train", train_aug=False)
    if len(cal_ds) == 0:
        raise DatasetError(f"{calib or cfg.path}: no calibration images")
    order = list(range(len(cal_ds)))
    random.Random(seed).shuffle(order)
    cal_idx = sorted(order[: min(calib_samples, len(order))])
    cal_files = _files(cal_ds)
    # Disjointness is enforced by content, not by path strings (a relative and an absolute spelling of one
    # folder, a symlink or a copied file are the same image).
    cal_ids = [sample_identity(cal_ds, i) for i in cal_idx]
    ev = evaluation_images(cfg, eval_path, eval_limit, set(cal_ids), show_progress)
    cx, cy = materialise(cal_ds, cal_idx, "calibration images", show_progress)
    return ArraySet(cx, cy, [cal_files[i] for i in cal_idx] if cal_files else [], str(calib or cfg.path), cal_ids), ev


def pooled_images(drawn: List[Tuple[str, str, str]], cfg: DataConfig, desc: str, show_progress: bool = True,
                  train: bool = False):
    """Pooled images (``(path, sha256, pool)``) as an ArraySet of centre crops, or (``train``) as a Dataset of
    augmented views for the QAT rung (the recipe's augmentation, else random resized crops and flips)."""
    from edgecv.data.folders import ImageList
    from edgecv.data.transforms import eval_transform, train_transform

    images = ImageList([(p, -1) for p, _, _ in drawn], [], desc)
    if train:
        aug = cfg if cfg.augment.random_resized_crop else _qat_augment(cfg)
        return ImageFileDataset(images, cfg.channels, train_transform(aug))
    ds = ImageFileDataset(images, cfg.channels, eval_transform(cfg))
    x, y = materialise(ds, range(len(ds)), desc, show_progress)
    return ArraySet(x, y, [p for p, _, _ in drawn], desc, [d for _, d, _ in drawn], origins=[o for _, _, o in drawn])


def _qat_augment(cfg: DataConfig) -> DataConfig:
    import copy

    c = copy.deepcopy(cfg)
    c.augment.random_resized_crop, c.augment.hflip = [0.35, 1.0], 0.5
    return c


def split_off(s: ArraySet, fraction: float, seed: int = 0) -> Tuple[ArraySet, ArraySet]:
    """(part, rest): a random ``fraction`` of ``s`` (at least one image, never all of them) and the remainder.

    The export's tune split (calibration method, per-layer fallback) is split off the held-out images this way,
    so the evaluation split that every reported number comes from was never used to choose anything.
    """
    n = len(s)
    if n < 2:
        raise DatasetError(f"{s.source}: {n} held-out image(s): too few to split into tune and evaluation images")
    k = min(n - 1, max(1, int(round(n * fraction))))
    order = np.random.default_rng(seed).permutation(n)
    part, rest = np.sort(order[:k]), np.sort(order[k:])
    if s.ids:  # a photograph held out twice (two names, the same bytes) must not judge what its copy chose
        chosen = {s.ids[i] for i in part}
        copies = [i for i in rest if s.ids[i] in chosen]
        if copies:
            rest = np.array([i for i in rest if s.ids[i] not in chosen], dtype=int)
            if not len(rest):
                raise DatasetError(f"{s.source}: every held-out image left after the tune split is a copy of a tune "
                                   "image")
            log.warning("%d held-out image(s) are copies of tune images: left out of the evaluation split",
                        len(copies))

    def take(idx):
        return ArraySet(s.x[idx], s.y[idx], [s.paths[i] for i in idx] if s.paths else [], s.source,
                        [s.ids[i] for i in idx] if s.ids else [], list(s.classes), s.excluded_overlap)

    return take(part), take(rest)
