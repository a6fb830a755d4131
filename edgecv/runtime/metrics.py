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


def kl_rows(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(logits)) per row, in float64 (the one implementation every gate and report
    uses)."""
    def log_softmax(a):
        a = np.asarray(a, np.float64)
        a = a - a.max(1, keepdims=True)
        return a - np.log(np.exp(a).sum(1, keepdims=True))

    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    return (np.exp(lp) * (lp - lq)).sum(1)


def mean_kl(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    return float(kl_rows(ref_logits, logits).mean())


def fidelity(ref_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """How closely a compressed model follows its fp32 reference on the same inputs: top-1 agreement, mean
    KL(fp32 || compressed) of the softmax outputs, and the worst per-class top-1 drop in points (over the
    classes present in ``labels``)."""
    labels = np.asarray(labels)
    ref_hit, hit = ref_logits.argmax(1) == labels, logits.argmax(1) == labels
    worst, worst_cls = 0.0, None
    for c in np.unique(labels):
        m = labels == c
        d = (ref_hit[m].mean() - hit[m].mean()) * 100
        if worst_cls is None or d > worst:
            worst, worst_cls = float(d), int(c)
    return {"agreement": float((ref_logits.argmax(1) == logits.argmax(1)).mean()),
            "mean_kl": mean_kl(ref_logits, logits),
            "worst_class_drop": worst, "worst_class": worst_cls}
