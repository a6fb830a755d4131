"""Match the classes of evaluation data to a model's labels: by name, never by position alone.

A folder tree's classes come from its sub-folder names (sorted), a flat ImageNet-style folder's from its
``classes.tsv``, Fashion-MNIST's from its fixed list. Scoring data against a model whose labels differ
(other names, another count, another order) would print a plausible but meaningless top-1, so:

- the same list, in the same order: labels are used as they are;
- the same names in another order: each data class is mapped to the model's index of that name;
- a label with a ``/`` matches a folder named with ``_`` in its place (``T-shirt/top`` -> ``T-shirt_top``),
  since folder names cannot hold a ``/``;
- names on either side that the other lacks: an error naming the missing and extra classes
  (``allow_subset`` accepts data that covers only some of the model's classes);
- data without labels, or names that occur twice where a mapping is needed: an error.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

import numpy as np

from edgecv.errors import DatasetError


def show_names(names: Sequence[str], n: int = 6) -> str:
    """The first ``n`` class names quoted, and how many more: how every message lists classes."""
    names = list(names)
    return ", ".join(repr(x) for x in names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def match_classes(data_classes: Sequence[str], model_labels: Sequence[str], data_where: str,
                  model_where: str = "the model", allow_subset: bool = False,
                  subset_hint: str = "") -> Optional[np.ndarray]:
    """None when data labels are model indices as they are; else the array mapping data index -> model index.
    ``subset_hint`` ends the refusal of data that lacks some labels and has no others (how the caller accepts it)."""
    data_classes, model_labels = list(data_classes), list(model_labels)
    if not data_classes:
        raise DatasetError(f"{data_where}: the images have no class labels (use one sub-folder per class, "
                           "or a flat folder with classes.tsv)")
    if data_classes == model_labels:
        return None
    model_keys = [_key(c) for c in model_labels]
    data_keys = [_key(c) for c in data_classes]
    have, want = set(data_keys), set(model_keys)
    extra = [c for c, k in zip(data_classes, data_keys) if k not in want]
    missing = [c for c, k in zip(model_labels, model_keys) if k not in have]
    if extra or (missing and not allow_subset):
        parts = []
        if extra:
            parts.append(f"{len(extra)} data class(es) not among the labels: {show_names(extra)}")
        if missing:
            parts.append(f"{len(missing)} of the labels missing from the data: {show_names(missing)}")
        hint = f" ({subset_hint})" if subset_hint and not extra else ""
        raise DatasetError(f"{data_where}: classes do not match {model_where}'s {len(model_labels)} labels "
                           f"({len(data_classes)} in the data): " + "; ".join(parts) + hint)
    cd, cm = Counter(data_keys), Counter(model_keys)
    dup = sorted(c for c in have if cd[c] > 1 or cm[c] > 1)
    if dup:
        raise DatasetError(f"{data_where}: class names occur more than once ({show_names(dup)}), so the data cannot be "
                           f"matched to {model_where}'s labels by name")
    index = {k: i for i, k in enumerate(model_keys)}
    return np.array([index[k] for k in data_keys], dtype=np.int64)


def _key(name: str) -> str:
    return name.replace("/", "_")


def apply_mapping(labels: np.ndarray, mapping: Optional[np.ndarray]) -> np.ndarray:
    return labels if mapping is None else mapping[labels]
