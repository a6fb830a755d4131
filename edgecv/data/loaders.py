"""Datasets for each reader, and ``load_data`` (torchvision references style)."""
from __future__ import annotations

import io
import logging
import random
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgecv.data.fashion_mnist import CLASSES as FASHION_CLASSES
from edgecv.data.fashion_mnist import is_fashion_mnist_dir, load_fashion_mnist
from edgecv.data.folders import ImageList, list_image_folder, list_images, list_wnid_folder, pil_failure
from edgecv.data.transforms import eval_transform, train_transform
from edgecv.errors import DatasetError
from edgecv.recipe import DataConfig
from edgecv.utils.images import read_encoded_image
from edgecv.utils.io import sha256_file, while_unchanged
from edgecv.utils.limits import frame_size_problem
from edgecv.utils.sampling import evenly_spaced
from edgecv.utils.signals import child_unblock

log = logging.getLogger("edgecv.data")


class ArrayDataset(Dataset):
    """uint8 images held in memory ([N,H,W] or [N,H,W,C]) with int labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: List[str], transform=None):
        self.images = torch.from_numpy(np.array(images, copy=True))
        if self.images.ndim == 3:
            self.images = self.images[:, None]
        else:
            self.images = self.images.permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.classes = classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        img = self.images[i]
        return (self.transform(img) if self.transform else img), int(self.labels[i])


class UnreadableImage(ValueError):
    """An image file that cannot be used (not a regular file, empty, over the frame budget, does not decode); the
    message is the reason, without the path, so every caller names the file once."""


def load_upright(path: str, channels: int) -> torch.Tensor:
    """A photograph as a uint8 CHW tensor, turned upright by its EXIF orientation as OpenCV turns it on the device
    (a phone's portrait photo is stored sideways with Orientation 6: PIL alone trained on it sideways while the
    bundle's runtime classified it upright), and 16-bit grey reduced to its top byte as OpenCV reduces it.

    The file is read as the device reads it (``edgecv.utils.images.read_encoded_image``: a regular file, within
    the frame budget by its header; a FIFO named ``x.jpg`` would block PIL forever). ``UnreadableImage`` (the
    reason, without the path) when it cannot be used."""
    from PIL import Image, ImageOps

    data, why = read_encoded_image(path)
    if data is None:  # counted and replaced like a file that does not decode
        raise UnreadableImage(why)
    try:
        with Image.open(io.BytesIO(data)) as im:
            why = frame_size_problem(im.height, im.width)  # formats whose header read_encoded_image cannot read
            if not why:
                im = ImageOps.exif_transpose(im)
                if im.mode.startswith("I;16"):  # 16-bit grey (thermal, depth): PIL's "L" saturates it, OpenCV keeps the top byte
                    im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8), "L")
                arr = np.asarray(im.convert("RGB" if channels == 3 else "L"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # PIL raises SyntaxError too
        raise UnreadableImage(pil_failure(e)) from None
    if why:
        raise UnreadableImage(why)
    t = torch.from_numpy(arr.copy())
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1)


class ImageFileDataset(Dataset):
    """Images decoded with PIL. A file that fails to decode is counted and replaced by the next one."""

    def __init__(self, images: ImageList, channels: int, transform=None):
        self.list = images
        self.samples = images.samples
        self.classes = images.classes
        self.channels = channels
        self.transform = transform
        self.failed: List[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> torch.Tensor:
        return load_upright(self.samples[i][0], self.channels)

    def __getitem__(self, i):
        for k in range(len(self.samples)):
            j = (i + k) % len(self.samples)
            try:
                img = self.load(j)
            except Exception as e:  # truncated or corrupt past what verify() sees
                if self.samples[j][0] not in self.failed:
                    self.failed.append(self.samples[j][0])
                    log.warning("%s: skipped, cannot decode (%s)", self.samples[j][0], e)
                continue
            return (self.transform(img) if self.transform else img), self.samples[j][1]
        raise DatasetError(f"{self.list.root}: no image could be decoded")


def dataset_for_path(path: str, cfg: DataConfig, train: bool = False) -> Dataset:
    """A dataset for any supported path: a Fashion-MNIST folder (test split), a wnid folder, an ImageFolder."""
    tf = train_transform(cfg) if train else eval_transform(cfg)
    p = Path(path)
    if is_fashion_mnist_dir(p):
        x, y = load_fashion_mnist(p, "train" if train else "test")
        return ArrayDataset(x, y, FASHION_CLASSES, tf)
    return ImageFileDataset(list_images(p), cfg.channels, tf)


# The "index" split's shuffle. The held-out split is a property of the data: it moved with train.seed, and the
# export drew it with export.calib_seed, so a recipe trained with another seed was judged on its own training images.
SPLIT_SEED = 0


def _split_indices(n: int, holdout: float) -> Tuple[List[int], List[int]]:
    idx = list(range(n))
    random.Random(SPLIT_SEED).shuffle(idx)
    k = int(round(n * holdout))
    return sorted(idx[k:]), sorted(idx[:k])


_HASHES: Dict[Tuple[str, int, int], str] = {}


def content_hash(path: str) -> str:
    """sha256 of a file's bytes: an image's identity whatever its name or folder (splits, disjointness)."""
    return while_unchanged(_HASHES, path, sha256_file)


def hash_holdout(digest: str, holdout: float) -> bool:
    """Whether the image of sha256 ``digest`` is held out: its first 32 bits, as a fraction, below ``holdout``."""
    return int(digest[:8], 16) / 2 ** 32 < holdout


def _hash_split(images: ImageList, holdout: float) -> Tuple[List[int], List[int]]:
    """(train, held out) indices by content hash: stable under renames, reordering and new images elsewhere."""
    held = [hash_holdout(content_hash(p), holdout) for p, _ in images.samples]
    return [i for i, h in enumerate(held) if not h], [i for i, h in enumerate(held) if h]


def _split_images(cfg: DataConfig, split: str) -> ImageList:
    """The image files of ``split`` (train | val) of an image-file recipe: ``data.val_path``, ROOT/train and ROOT/val,
    or ``data.holdout`` of ROOT split off by index or content hash."""
    if cfg.val_path and split == "val":
        return list_images(cfg.val_path)
    root = Path(cfg.path)
    if cfg.kind == "image_folder" and (root / split).is_dir():
        return list_image_folder(root / split)
    images = list_wnid_folder(root) if cfg.kind == "wnid_folder" else list_image_folder(root)
    if cfg.holdout > 0:
        train_idx, val_idx = (_hash_split(images, cfg.holdout) if cfg.split == "hash"
                              else _split_indices(len(images), cfg.holdout))
        images = images.subset(train_idx if split == "train" else val_idx)
        if len(images) == 0:
            raise DatasetError(f"{root}: the {split} split is empty (holdout={cfg.holdout})")
    return images


def training_identities(cfg: DataConfig) -> Set[str]:
    """Content hashes (``content_hash``) of the training images of an image-file recipe; empty for Fashion-MNIST's
    arrays, a recipe without a training split, or when the recipe's folder is not on this machine."""
    if cfg.kind == "fashion_mnist" or not Path(cfg.path).is_dir() or validates_on_training_images(cfg):
        # no training split: a recipe that holds nothing out is never trained (load_data refuses it), only judged
        # (a pretrained network on its folder, as the ImageNet recipe is)
        return set()
    try:  # listed as training lists them (unreadable files screened out): the index split depends on the list
        return {content_hash(p) for p, _ in _split_images(cfg, "train").samples}
    except DatasetError:  # no training images to be found there: none to leave out
        return set()


def _split_by_hash(cfg: DataConfig) -> bool:
    """Whether the held-out images are ``data.holdout`` of the folder split by content hash (no separate folder)."""
    separate = cfg.val_path or (cfg.kind == "image_folder" and (Path(cfg.path) / "val").is_dir())
    return cfg.holdout > 0 and cfg.split == "hash" and not separate


def _without_training_copies(held_out: ImageList, cfg: DataConfig) -> ImageList:
    """``held_out`` less every image whose bytes are also a training image's: scraped folders hold copies under
    other names, and an index split or a separate validation folder would score the model on images it trained on
    (a split by content hash never does)."""
    if _split_by_hash(cfg):
        return held_out
    seen = training_identities(cfg)
    keep = [i for i, (p, _) in enumerate(held_out.samples) if content_hash(p) not in seen]
    if len(keep) == len(held_out):
        return held_out
    if not keep:
        raise DatasetError(f"{cfg.val_path or cfg.path}: every held-out image is a copy of a training image")
    log.warning("%d held-out image(s) are byte-for-byte copies of training images: left out of validation",
                len(held_out) - len(keep))
    out = held_out.subset(keep)
    out.training_copies = len(held_out) - len(keep)
    return out


def training_copies(ds) -> int:
    """How many byte-for-byte copies of training images ``_without_training_copies`` left out of dataset ``ds``."""
    return getattr(getattr(ds, "list", None), "training_copies", 0)


def build_dataset(cfg: DataConfig, split: str, train_aug: Optional[bool] = None) -> Dataset:
    """``split`` is train | val. ``train_aug`` defaults to True for train. The val split of image files never holds
    a copy of a training image (``_without_training_copies``)."""
    aug = (split == "train") if train_aug is None else train_aug
    tf = train_transform(cfg) if aug else eval_transform(cfg)
    if cfg.kind == "fashion_mnist":
        x, y = load_fashion_mnist(cfg.path, "train" if split == "train" else "test")
        if split == "train" and cfg.train_limit:
            x, y = x[: cfg.train_limit], y[: cfg.train_limit]
        if split == "val" and cfg.val_limit:
            keep = evenly_spaced(len(y), cfg.val_limit)
            x, y = x[keep], y[keep]
        return ArrayDataset(x, y, FASHION_CLASSES, tf)
    images = _split_images(cfg, split)
    if split == "val":
        images = _without_training_copies(images, cfg)
        if cfg.val_limit:  # spread over the classes: a folder lists them one by one
            copies = images.training_copies
            images = images.subset(evenly_spaced(len(images), cfg.val_limit))
            images.training_copies = copies
    if split == "train" and cfg.train_limit:  # spread over the classes: a folder lists them one by one
        images = images.subset(evenly_spaced(len(images), cfg.train_limit))
    return ImageFileDataset(images, cfg.channels, tf)


def validates_on_training_images(cfg: DataConfig) -> bool:
    """Whether the "val" split of ``cfg`` is its training images (an image folder with nothing held out)."""
    if cfg.kind == "fashion_mnist" or cfg.val_path or cfg.holdout > 0:
        return False
    return not (cfg.kind == "image_folder" and (Path(cfg.path) / "val").is_dir())


def load_data(cfg: DataConfig, distributed: bool = False, seed: int = 0):
    """Return ``(train_set, val_set, train_loader, val_loader, train_sampler)``."""
    if validates_on_training_images(cfg):
        raise DatasetError(f"{cfg.path}: no held-out images (data.holdout is 0, no data.val_path, no val/ folder), so "
                           "every top-1 would be measured on the training images: set data.holdout (e.g. 0.2) or "
                           "data.val_path")
    train_set = build_dataset(cfg, "train")
    if len(train_set.classes) < 2:  # every answer would be that class: top-1 1.0 that means nothing
        raise DatasetError(f"{cfg.path}: {len(train_set.classes)} class(es) {list(train_set.classes)}; a classifier "
                           "needs at least 2 (one sub-folder per class)")
    _refuse_untrained_classes(train_set, cfg)
    val_set = _matched(build_dataset(cfg, "val"), train_set, cfg)
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_set, shuffle=True, seed=seed)
        val_sampler = DistributedSampler(val_set, shuffle=False)
    else:
        sampler = torch.utils.data.RandomSampler(train_set, generator=torch.Generator().manual_seed(seed))
        val_sampler = torch.utils.data.SequentialSampler(val_set)
    # workers are forked with the CLI's blocked SIGTERM/SIGINT (utils.signals): unblocked, so terminate() ends them
    train_loader = DataLoader(train_set, cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                              drop_last=len(train_set) > cfg.batch_size, persistent_workers=cfg.workers > 0,
                              worker_init_fn=_unblock_signals)
    val_loader = DataLoader(val_set, cfg.eval_batch_size, sampler=val_sampler, num_workers=cfg.workers,
                            worker_init_fn=_unblock_signals)
    return train_set, val_set, train_loader, val_loader, sampler


def _refuse_untrained_classes(train_set: Dataset, cfg: DataConfig) -> None:
    """A class folder with no readable training image would be an output never trained, a label the model names
    but cannot answer (torchvision's ImageFolder refuses it too)."""
    images = getattr(train_set, "list", None)
    if images is None or cfg.kind != "image_folder":  # arrays hold every class; classes.tsv may name more than a folder has
        return
    seen = {y for _, y in images.samples}
    missing = [c for i, c in enumerate(images.classes) if i not in seen]
    if missing:
        from edgecv.data.classes import show_names

        held = f"; data.holdout {cfg.holdout} may have held out all of a small class" if cfg.holdout else ""
        raise DatasetError(f"{images.root}: class folder(s) {show_names(missing)} hold no readable training image "
                           f"(unreadable files are skipped{held}): add images, or remove the folder")


def _matched(val_set: Dataset, train_set: Dataset, cfg: DataConfig) -> Dataset:
    """The validation images labelled with the training classes' indices, matched by name (a ``val_path`` or a
    ``val/`` folder lists its own classes: one missing class shifted every index after it, and top-1 was scored
    against the wrong labels). It may lack classes; a class training never saw is an error."""
    from edgecv.data.classes import match_classes

    where = f"{cfg.val_path or cfg.path} (validation images)"
    mapping = match_classes(val_set.classes, train_set.classes, where, "the training data", allow_subset=True)
    if mapping is None:
        return val_set
    images = val_set.list
    relabelled = ImageList([(f, int(mapping[y])) for f, y in images.samples], list(train_set.classes), images.root,
                           list(images.skipped))
    return ImageFileDataset(relabelled, val_set.channels, val_set.transform)


def _unblock_signals(worker_id: int) -> None:
    child_unblock()
