"""``edgecv eval`` for PyTorch sources (recipe or checkpoint)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional

from torch.utils.data import DataLoader, Subset

from edgecv.data.loaders import ImageFileDataset, build_dataset, dataset_for_path, training_identities
from edgecv.errors import DatasetError, RecipeError, SourceError
from edgecv.recipe import is_recipe, load_recipe
from edgecv.train.engine import evaluate
from edgecv.train.loop import RUN_RECIPE
from edgecv.train.sources import load_source
from edgecv.utils.sampling import evenly_spaced

log = logging.getLogger("edgecv.eval")


def eval_source(target: str, data: Optional[str], overrides: List[str] = (), limit: Optional[int] = None,
                batch_size: int = 64, show_progress: bool = True, allow_subset: bool = False) -> Dict:
    """Top-1/top-5 of a recipe's or checkpoint's model on the images under ``data`` (classes matched by name);
    without ``data``, a recipe's own held-out split, the one its training reports."""
    import torch

    from edgecv.data.classes import match_classes

    src = load_source(target, overrides)
    if data is None:
        if src.recipe is None:
            raise SourceError(f"{target}: a checkpoint carries no data; name the images with --data")
        ds, data = build_dataset(src.recipe.data, "val"), f"{target} (held-out split)"
        allow_subset = True  # as training scored it (edgecv.data.loaders.load_data): a class may have no images there
    else:
        ds = dataset_for_path(data, src.data, train=False)
    trained_with = src.recipe or run_recipe(target, src.arch)
    left_out = _leave_out_training_images(ds, trained_with) if data is not None and trained_with else None
    mapping = match_classes(ds.classes, src.classes, data, target, allow_subset)
    if limit:
        ds = Subset(ds, evenly_spaced(len(ds), limit))  # a folder lists its images class by class
    loader = DataLoader(ds, batch_size=batch_size)
    res = evaluate(src.model, loader, show_progress=show_progress,
                   target_map=None if mapping is None else torch.from_numpy(mapping))
    base = ds.dataset if isinstance(ds, Subset) else ds
    skipped = len(getattr(getattr(base, "list", None), "skipped", []) or []) + len(getattr(base, "failed", []))
    return {"top1": res["top1"], "top5": res["top5"], "n": res["n"], "skipped": skipped,
            "left_out_training": left_out, "target": target, "data": data, "backend": "pytorch"}


def run_recipe(checkpoint: str, arch: str):
    """The recipe a checkpoint was trained with, where it still lies in its run's folder (``edgecv train -o``
    writes RUN_RECIPE beside model.pt and last.pt) and that recipe builds the same network; else None (a copied
    checkpoint does not know its training images). One that does not load is said and left aside."""
    f = Path(checkpoint).parent / RUN_RECIPE
    if is_recipe(checkpoint) or not f.is_file():
        return None
    try:
        recipe = load_recipe(f)
    except RecipeError as e:
        log.warning("%s: not used to leave out %s's training images (%s)", f, checkpoint, e)
        return None
    return recipe if recipe.model.name == arch else None


def _leave_out_training_images(ds, recipe) -> int:
    """Leave out of ``ds`` (an image folder) the recipe's training images, by content, as ``edgecv eval BUNDLE``
    leaves out a bundle's seen images: how many."""
    if not isinstance(ds, ImageFileDataset):  # Fashion-MNIST's test split: never its training arrays
        return 0
    trained = training_identities(recipe.data)
    if not trained:
        return 0
    kept = [i for i, (path, _) in enumerate(ds.samples) if _identity(path) not in trained]
    n = len(ds.samples) - len(kept)
    if n and not kept:
        raise DatasetError(f"{ds.list.root}: every image is one of {recipe.source or 'the recipe'}'s training images "
                           f"({n}); evaluate on images it did not train on, or give the recipe alone (its held-out "
                           "split)")
    if n:
        log.warning(
            "%d image(s) of %s were left out: they are the recipe's training images, and a number measured on them "
            "would flatter it", n, ds.list.root)
        ds.list = ds.list.subset(kept)
        ds.samples = ds.list.samples
    return n


def _identity(path: str) -> str:
    from edgecv.data.loaders import content_hash

    try:
        return content_hash(path)
    except OSError:
        return ""  # unreadable: counted as skipped when it is loaded

