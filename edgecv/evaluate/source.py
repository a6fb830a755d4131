"""``edgecv eval`` for PyTorch sources (recipe or checkpoint)."""
from __future__ import annotations

from typing import Dict, List, Optional

from torch.utils.data import DataLoader, Subset

from edgecv.data.loaders import build_dataset, dataset_for_path
from edgecv.errors import SourceError
from edgecv.train.engine import evaluate
from edgecv.train.sources import load_source
from edgecv.utils.sampling import evenly_spaced


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
    mapping = match_classes(ds.classes, src.classes, data, target, allow_subset)
    if limit:
        ds = Subset(ds, evenly_spaced(len(ds), limit))  # a folder lists its images class by class
    loader = DataLoader(ds, batch_size=batch_size)
    res = evaluate(src.model, loader, show_progress=show_progress,
                   target_map=None if mapping is None else torch.from_numpy(mapping))
    base = ds.dataset if isinstance(ds, Subset) else ds
    skipped = len(getattr(getattr(base, "list", None), "skipped", []) or []) + len(getattr(base, "failed", []))
    return {"top1": res["top1"], "top5": res["top5"], "n": res["n"], "skipped": skipped,
            "target": target, "data": data, "backend": "pytorch"}
