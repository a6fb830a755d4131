"""The export's options: the recipe's ``export:`` section with the command line's flags on top, checked."""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from typing import Dict, List, Optional, Tuple

from edgecv import targets
from edgecv.errors import RecipeError
from edgecv.recipe import (
    CALIB_CHOICES,
    PRUNE_METHODS,
    QAT_METHODS,
    WEIGHT_ROUNDINGS,
    ExportConfig,
    Recipe,
    check_ranges,
    is_recipe,
    load_recipe,
)


def export_options(source: str, flags: Dict, overrides: List[str] = ()) -> Tuple[Optional[Recipe], ExportConfig]:
    """The recipe (None when SOURCE is a checkpoint) and the export's checked options.

    Torch-free on purpose: the CLI calls it before importing the pipeline, so a typo in a flag or a recipe field
    is refused in half a second instead of after seconds of torch, torchvision and ONNX Runtime imports.
    """
    recipe = load_recipe(source, list(overrides)) if is_recipe(source) else None
    opts = resolve_options(recipe, flags)
    return recipe, opts


def resolve_options(recipe: Optional[Recipe], flags: Dict) -> ExportConfig:
    """The recipe's ``export:`` section, with every flag the user passed on top."""
    from edgecv.export.calibration_set import is_definition, load_calibration_set

    cfg = copy.deepcopy(recipe.export) if recipe else ExportConfig()
    known = {f.name for f in dataclasses.fields(ExportConfig)}
    for k in flags:
        if k not in known:  # a typo in the Python API's dict was set as a stray attribute and ignored
            near = difflib.get_close_matches(str(k), known, n=1)
            raise RecipeError(f"export option {k!r} does not exist" + (f" (did you mean {near[0]!r}?)" if near else
                                                                           " (see ExportConfig in edgecv/recipe.py)"))
    for k, v in flags.items():
        if v is not None:  # a pathlib.Path from the Python API: the manifest records it as the string it is
            setattr(cfg, k, os.fspath(v) if isinstance(v, os.PathLike) else v)
    if is_definition(cfg.calib):
        # A calibration set file overrides the recipe's calib_* fields; explicit flags still win.
        cs = load_calibration_set(cfg.calib)
        cfg.calib_set, cfg.calib, cfg.calib_seed = cfg.calib, cs.images, cs.seed
        cfg.calib_pools = cs if cs.pools else None
        if flags.get("calib_samples") is None:
            cfg.calib_samples = cs.samples
        if flags.get("calib_method") is None:
            cfg.calib_method = cs.method
    check_ranges(cfg, flag_style=True)
    if cfg.distill and cfg.prune == 0 and cfg.drop_blocks == 0 and cfg.input_size is None:
        raise RecipeError("--distill: needs --prune, --drop-blocks or --input-size (distillation recovers accuracy "
                          "lost to pruning or to fewer pixels; without any there is nothing to recover): add --prune "
                          "R, or --no-distill")
    if not cfg.targets:
        raise RecipeError(f"--target: no target given (expected some of: {', '.join(targets.names())})")
    for t in cfg.targets:
        if t not in targets.names():
            raise RecipeError(f"--target: unknown target {t!r} (expected one of: {', '.join(targets.names())})")
        ok, why = targets.export_check(targets.get(t))
        if not ok:
            raise RecipeError(f"--target {t}: {why}; the export judges a CPU target's artefact with its own runtime")
    from edgecv.data.corruptions import parse_names, severities

    try:
        if cfg.corruptions != "none":
            parse_names(cfg.corruptions)
        severities(cfg.corruption_severities)
    except ValueError as e:
        raise RecipeError(f"--corruptions: {e}") from None
    if cfg.calib_method not in CALIB_CHOICES:
        raise RecipeError(f"--calib-method: unknown method {cfg.calib_method!r}")
    if cfg.prune_method not in PRUNE_METHODS:
        raise RecipeError(f"--prune-method: unknown method {cfg.prune_method!r} (expected one of "
                          f"{', '.join(PRUNE_METHODS)})")
    if cfg.weight_rounding not in WEIGHT_ROUNDINGS:
        raise RecipeError(f"--weight-rounding: unknown rounding {cfg.weight_rounding!r} (expected one of "
                          f"{', '.join(WEIGHT_ROUNDINGS)})")
    if cfg.qat_method not in QAT_METHODS:
        raise RecipeError(f"--qat-method: unknown method {cfg.qat_method!r} (expected one of {', '.join(QAT_METHODS)})")
    return cfg
