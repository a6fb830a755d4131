"""Turn what a user names on the command line (a recipe or a checkpoint) into a model and its data spec."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from torch import nn

from edgecv.errors import SourceError  # noqa: F401 (re-exported)
from edgecv.recipe import SOURCE_KINDS, DataConfig, Recipe, is_recipe, load_recipe
from edgecv.utils.io import relative_hint


@dataclass
class ModelSource:
    model: nn.Module
    arch: str
    arch_args: Dict
    classes: List[str]
    data: DataConfig
    recipe: Optional[Recipe]
    checkpoint: Optional[str]
    pruned: bool = False


def data_config_from_spec(spec: Dict, base: Optional[DataConfig] = None, where: str = "checkpoint") -> DataConfig:
    from edgecv.bundle.spec import PreprocessSpec
    from edgecv.errors import BundleError

    try:
        s = PreprocessSpec.from_dict(spec, f"{where}: its preprocessing spec")
    except BundleError as e:
        raise SourceError(str(e)) from None
    cfg = dataclasses.replace(base) if base else DataConfig()
    cfg.input_size, cfg.channels = s.input_size, s.channels
    cfg.resize, cfg.mean, cfg.std = spec.get("resize"), list(s.mean), list(s.std)
    return cfg


def load_source(path: str, overrides: List[str] = (), allow_train: bool = False,
                show_progress: bool = True) -> ModelSource:
    """Load a model from a recipe (its checkpoint, or its pretrained weights) or a checkpoint file.

    With ``allow_train`` a recipe whose checkpoint does not exist yet is trained first.
    """
    from edgecv.models.checkpoint import CheckpointError, load_checkpoint

    p = Path(path)
    if not p.exists():
        raise SourceError(f"{path}: no such file (expected {SOURCE_KINDS})")
    if is_recipe(path):
        recipe = load_recipe(path, overrides)
        ckpt_path = recipe.checkpoint
        if ckpt_path and not Path(ckpt_path).exists() and any(str(o).startswith("checkpoint=") for o in overrides):
            # the recipe's own checkpoint is trained when missing; one named on the command line is a typo, and
            # training into its folder would start a long run somewhere unexpected
            raise SourceError(f"--set checkpoint={ckpt_path}: no such file{relative_hint(ckpt_path)}; leave it out "
                              f"to use {path}'s own checkpoint ({load_recipe(path).checkpoint or 'none set'})")
        if ckpt_path and not Path(ckpt_path).exists() and allow_train:
            from edgecv.train.loop import train

            print(f"[edgecv] {ckpt_path} not found: training {path} first")
            train(recipe, Path(ckpt_path).parent, show_progress=show_progress)
        if ckpt_path and Path(ckpt_path).exists():
            model, ckpt = load_checkpoint(ckpt_path)
            _check_recipe_fits(recipe, path, model, ckpt, ckpt_path)
            return ModelSource(model, ckpt["arch"], ckpt["arch_args"], ckpt["classes"], recipe.data, recipe,
                               ckpt_path, ckpt.get("pruned", False))
        if not recipe.model.pretrained:
            raise SourceError(f"{path}: no trained checkpoint ({ckpt_path or 'checkpoint: not set'}); "
                              f"run `edgecv train {path}` first")
        from edgecv.train.loop import build_model

        classes = _recipe_classes(recipe)
        model = build_model(recipe, len(classes)).eval()
        return ModelSource(model, recipe.model.name, dict(recipe.model.args), classes, recipe.data, recipe, None)
    if str(path).lower().endswith(".onnx") and os.path.isfile(path):
        raise SourceError(f"{path}: an ONNX file carries no labels or preprocessing of its own: give the bundle "
                          "folder that holds it (eval, bench, run), or a recipe .yaml or an edgecv checkpoint")
    try:
        model, ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise SourceError(f"{e} (SOURCE must be a recipe .yaml or an edgecv checkpoint)") from None
    return ModelSource(model, ckpt["arch"], ckpt["arch_args"], ckpt["classes"],
                       data_config_from_spec(ckpt["preprocess"], where=str(path)), None, str(path),
                       ckpt.get("pruned", False))


def _check_recipe_fits(recipe: Recipe, path: str, model, ckpt: Dict, ckpt_path: str) -> None:
    """A recipe judges and exports its checkpoint with its own ``data:``: the checkpoint must hold the recipe's
    network, normalised as it was trained (another input size is allowed: measuring one is a use), and that network
    must run at the recipe's input size."""
    from edgecv.data.transforms import preprocess_spec
    from edgecv.train.engine import cannot_run_at

    arch, trained, now = ckpt["arch"], ckpt.get("preprocess") or {}, preprocess_spec(recipe.data)
    if recipe.model.name != arch:
        raise SourceError(f"{ckpt_path}: holds a {arch} model, but {path} names model {recipe.model.name!r}: set "
                          "checkpoint= to this recipe's run, or use the recipe the checkpoint was trained with")
    changed = [k for k in ("channels", "mean", "std") if k in trained and not _same(trained[k], now[k])]
    if changed:
        verb = "differs" if len(changed) == 1 else "differ"
        raise SourceError(f"{path}: data.{', data.'.join(changed)} {verb} from what {ckpt_path} was trained with ("
                          + "; ".join(f"{k} {trained[k]} there, {now[k]} here" for k in changed) + "): the model "
                          "would see other pixels than it learnt on; use the values it was trained with, or retrain")
    d = recipe.data
    why = cannot_run_at(model, d.channels, d.input_size)
    if why:
        raise SourceError(f"{path}: data.input_size {d.input_size} with {d.channels} channel(s): the {arch} in "
                          f"{ckpt_path} cannot run at that size ({why})")


def _same(a, b) -> bool:
    a, b = np.atleast_1d(np.asarray(a, dtype=float)), np.atleast_1d(np.asarray(b, dtype=float))
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0, atol=1e-6))


def _recipe_classes(recipe: Recipe) -> List[str]:
    d = recipe.data
    if d.kind == "fashion_mnist":
        from edgecv.data.fashion_mnist import CLASSES

        return list(CLASSES)
    if d.kind == "wnid_folder":
        from edgecv.data.folders import read_classes_tsv

        return read_classes_tsv(Path(d.path) / "classes.tsv")[0]
    from edgecv.data.folders import list_image_folder

    return list_image_folder(Path(d.path) / "train" if (Path(d.path) / "train").is_dir() else d.path,
                             verify=False).classes
