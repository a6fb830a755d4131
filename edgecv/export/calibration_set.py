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
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgecv.errors import RecipeError
from edgecv.recipe import CALIB_METHODS, _build
from edgecv.utils.yaml_files import read_yaml_mapping


@dataclass
class CalibrationSet:
    description: str = ""
    images: Optional[str] = None
    samples: int = 256
    method: str = "minmax"
    seed: int = 0


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
    return cs
