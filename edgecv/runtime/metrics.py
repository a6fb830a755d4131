"""Top-k accuracy counts: the one implementation every evaluation uses (numpy only, no torch)."""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np


def topk_correct(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> List[int]:
    """How many rows have their label among the k highest logits, for each k (k capped at the class count)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    maxk = min(max(ks), logits.shape[1])
    if maxk == 1:
        top = logits.argmax(1)[:, None]
    else:
        part = np.argpartition(-logits, maxk - 1, axis=1)[:, :maxk]
        order = np.argsort(-np.take_along_axis(logits, part, 1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, 1)
    hit = top == labels[:, None]
    return [int(hit[:, : min(k, maxk)].any(1).sum()) for k in ks]


def topk_accuracy(logits: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """``{"top1", "top5", "n"}`` for a whole set of logits."""
    c1, c5 = topk_correct(logits, labels)
    n = len(labels)
    return {"top1": c1 / n if n else 0.0, "top5": c5 / n if n else 0.0, "n": int(n)}
