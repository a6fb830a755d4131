"""Calibration set definitions (``calibration/*.yaml``): which images calibrate int8, how many, how.

A definition names a reusable, reviewable calibration set, so that two exports (or two people) calibrate
on the same images::

    description: 250 of the 500 shared ImageNet images; the other 250 stay held out for the accuracy gate
    images: ../shared/data/imagenet-samples   # a folder; null = the recipe's training split
    samples: 250                              # how many are drawn (seeded, without replacement)
    method: percentile                        # minmax | entropy | percentile
    seed: 0

``edgecv export --calib calibration/X.yaml`` (or ``export.calib`` in a recipe) uses it; ``--calib-samples``
and ``--calib-method`` on the command line still win. Relative ``images`` paths resolve against the working
directory, as recipe data paths do.

Instead of one folder, a set can draw on **pools**: several folders of photographs, labelled or not (labels are
never read: agreement with fp32 needs none), each with how many images to take (seeded)::

    pools:
      - {images: ../shared/data/imagenette, take: 2000}
      - {images: ../shared/data/caltech101, take: 3500}
    samples: 512        # of the pooled images, these calibrate
    agreement: 1200     # these join the tune split, for top-1 agreement with fp32 (never top-1: no labels)
    qat: 3000           # these (disjoint from the agreement images) train the QAT rung

Pooled images are kept disjoint from every evaluation and tune image by content hash, and the manifest records
what came from which pool and went to which use (edgecv.export.pools).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from edgecv.errors import RecipeError
from edgecv.recipe import CALIB_METHODS, _build, seed_field
from edgecv.utils.yaml_files import read_yaml_mapping


@dataclass
class Pool:
    images: str
    take: Optional[int] = None  # how many images to draw (seeded); None: all of them


@dataclass
class CalibrationSet:
    description: str = ""
    images: Optional[str] = None
    samples: int = 256
    method: str = "minmax"
    seed: int = seed_field()
    pools: List[Pool] = field(default_factory=list)
    agreement: int = 0  # pooled images added to the tune split (agreement with fp32 only)
    qat: int = 0  # pooled images the QAT rung trains on (0: the calibration images)


def is_definition(path: Optional[str]) -> bool:
    """True when ``path`` names a calibration set file rather than an image folder."""
    return bool(path) and str(path).lower().endswith((".yaml", ".yml"))


def load_calibration_set(path: str | os.PathLike) -> CalibrationSet:
    """Load and validate one definition; errors name the file and the key."""
    path = Path(path)
    cs = _build(CalibrationSet, read_yaml_mapping(path, "calibration set"), f"{path}: ")
    if cs.method not in CALIB_METHODS:
        raise RecipeError(f"{path}: method: expected one of {list(CALIB_METHODS)}, got {cs.method!r}")
    if cs.samples < 1:
        raise RecipeError(f"{path}: samples: must be >= 1, got {cs.samples}")
    if cs.images is not None and not Path(cs.images).is_dir():
        raise RecipeError(f"{path}: images: {cs.images} is not a folder")
    if cs.images is not None and cs.pools:
        raise RecipeError(f"{path}: give images (one folder) or pools, not both")
    first: dict = {}  # real folder -> the pool that named it first
    for i, pool in enumerate(cs.pools):
        if not Path(pool.images).is_dir():
            raise RecipeError(f"{path}: pools[{i}].images: {pool.images} is not a folder")
        j = first.setdefault(os.path.realpath(pool.images), i)
        if j != i:  # the second would find only the first's images again, and the record would count them twice
            raise RecipeError(f"{path}: pools[{i}].images: {pool.images} is the folder pools[{j}] already names; "
                              "give it one pool with a larger take")
        if pool.take is not None and pool.take < 1:
            raise RecipeError(f"{path}: pools[{i}].take: must be >= 1, got {pool.take}")
    if (cs.agreement or cs.qat) and not cs.pools:
        raise RecipeError(f"{path}: agreement and qat draw on pools: name some")
    if cs.agreement < 0 or cs.qat < 0:
        raise RecipeError(f"{path}: agreement and qat must be >= 0")
    return cs
