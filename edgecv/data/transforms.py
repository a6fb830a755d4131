"""Training and evaluation transforms built from the recipe's ``data`` section (torchvision v2)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torchvision.transforms import v2 as T

from edgecv.recipe import DataConfig


def _to_channels(channels: int):
    def fix(img: torch.Tensor) -> torch.Tensor:
        if img.shape[-3] == channels:
            return img
        if img.shape[-3] == 1 and channels == 3:
            return img.expand(*img.shape[:-3], 3, *img.shape[-2:])
        if img.shape[-3] == 3 and channels == 1:
            return (img.float() @ torch.tensor([0.299, 0.587, 0.114])[None]).to(img.dtype)  # pragma: no cover
        raise ValueError(f"cannot convert {img.shape[-3]} channels to {channels}")

    return T.Lambda(fix)


def train_transform(cfg: DataConfig) -> T.Compose:
    """Augmentation for training, on uint8 CHW tensors."""
    a, size = cfg.augment, cfg.input_size
    ops = [_to_channels(cfg.channels)]
    if a.random_resized_crop:
        ops.append(T.RandomResizedCrop(size, scale=tuple(a.random_resized_crop), antialias=True))
    else:
        # a random crop out of the image resized exactly as for evaluation: objects keep the size they have at
        # test time (a crop from an image resized to ``input_size`` shows them smaller than the eval centre crop)
        ops.append(T.Resize(cfg.resize or size, antialias=True))
        ops.append(T.RandomCrop(size, padding=a.random_crop_padding or None))
    if a.hflip:
        ops.append(T.RandomHorizontalFlip(a.hflip))
    if a.rotation:
        ops.append(T.RandomRotation(a.rotation))
    if a.color_jitter:
        ops.append(T.ColorJitter(a.color_jitter, a.color_jitter, a.color_jitter if cfg.channels == 3 else 0))
    ops += [T.ToDtype(torch.float32, scale=True), T.Normalize(cfg.mean, cfg.std)]
    return T.Compose(ops)


def eval_transform(cfg: DataConfig) -> T.Compose:
    """Resize the shorter side to ``resize``, centre-crop ``input_size``, normalise.

    The device runtime implements the same spec in numpy/OpenCV (edgecv.runtime.preprocess).
    """
    resize = cfg.resize or cfg.input_size
    return T.Compose([
        _to_channels(cfg.channels),
        T.Resize(resize, antialias=True),
        T.CenterCrop(cfg.input_size),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(cfg.mean, cfg.std),
    ])


def preprocess_spec(cfg: DataConfig) -> dict:
    """The preprocessing a deployed model needs, as plain data (stored in checkpoints and bundles):
    :class:`edgecv.bundle.spec.PreprocessSpec`'s JSON form."""
    from edgecv.bundle.spec import PreprocessSpec

    return PreprocessSpec(cfg.input_size, cfg.channels, tuple(cfg.mean), tuple(cfg.std),
                          cfg.resize or cfg.input_size, cfg.input_size).to_dict()


def at_input_size(cfg: DataConfig, size: Optional[int]) -> DataConfig:
    """``cfg`` with its input size changed to ``size`` (None: unchanged), the evaluation resize scaled with it, so
    the centre crop covers the same part of each image at the new resolution."""
    if size is None or size == cfg.input_size:
        return cfg
    resize = cfg.resize or cfg.input_size
    return dataclasses.replace(cfg, input_size=size, resize=max(size, round(resize * size / cfg.input_size)))
