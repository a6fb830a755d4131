"""The metrics and the budget rule, one implementation each, that every gate, report and device check uses
(numpy only, no torch): top-k accuracy, top-1 agreement with fp32, KL divergence, softmax and top-k of one row,
and whether a compressed model is within its fidelity budget."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import numpy as np

# The fidelity budget's ranges, as the export's --max-drop and --min-agreement take them (a manifest's budget is
# checked against them: NaN or -1 would let any int8 answer pass).
BUDGET_RANGES = {"max_drop": (0.0, 100.0), "min_agreement": (0.0, 1.0)}
DROP_TOLERANCE = 1e-9  # points: a drop equal to the budget is within it, whatever the float rounding


def unseen_change_bound(n: int) -> float:
    """With none of ``n`` images changing class, the 95% upper bound on the share that could: about 3/n (the rule
    of three), at most 1."""
    return min(1.0, 3.0 / max(n, 1))


@dataclass(frozen=True)
class Budget:
    """How far a compressed model may stray from its fp32 reference: ``max_drop`` points of top-1 and at least
    ``min_agreement`` top-1 agreement. The one rule the export's tune gate, its held-out check and ``edgecv
    verify`` on the device all apply."""

    max_drop: float = 1.0
    min_agreement: float = 0.99

    def __post_init__(self):
        for key, (lo, hi) in BUDGET_RANGES.items():
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) or math.isnan(v):
                raise ValueError(f"{key}: expected a number from {lo} to {hi}, got {v!r}")

    @classmethod
    def from_dict(cls, d: Any) -> "Budget":
        """A budget from a manifest's ``golden.budget`` (ValueError naming the key when out of range)."""
        if not isinstance(d, dict):
            raise ValueError(f"expected {{max_drop, min_agreement}}, got {d!r}")
        return cls(d.get("max_drop"), d.get("min_agreement"))

    def to_dict(self) -> Dict[str, float]:
        return {"min_agreement": self.min_agreement, "max_drop": self.max_drop}

    def images_to_show_agreement(self) -> int:
        """How many images an agreement check needs before passing it means anything: the floor is shown only
        once :func:`unseen_change_bound` falls to ``1 - min_agreement`` (300 images for 99%)."""
        gap = 1.0 - self.min_agreement
        return 1 if gap <= 0 or gap >= 1 else math.ceil(3.0 / gap - 1e-9)

    def problems(self, ref_top1: float, top1: float, agreement_: float) -> List[str]:
        """Why a model of ``top1`` against fp32's ``ref_top1``, agreeing on ``agreement_``, is outside the budget
        (empty: within it)."""
        out = []
        drop = (ref_top1 - top1) * 100
        if not agreement_ >= self.min_agreement:  # NaN agreement is outside
            out.append(f"top-1 agreement with fp32 {agreement_:.1%} < {self.min_agreement:.1%}")
        if not drop <= self.max_drop + DROP_TOLERANCE:
            out.append(f"top-1 drop {drop:.2f} points > {self.max_drop}")
        return out

    def within(self, ref_top1: float, top1: float, agreement_: float) -> bool:
        return not self.problems(ref_top1, top1, agreement_)


def agreement(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Top-1 agreement: the share of rows whose highest logit is the same class in both."""
    ref_logits, logits = np.asarray(ref_logits), np.asarray(logits)
    return float((ref_logits.argmax(1) == logits.argmax(1)).mean()) if len(logits) else 0.0


def agreement_by_group(ref_logits: np.ndarray, logits: np.ndarray, groups) -> Dict[str, Dict]:
    """Top-1 agreement within each group of rows (``groups``: one name per row), in first-seen order:
    ``{name: {"images": n, "agreement": share}}``. Where the images come from several places (labelled held-out
    images, unlabelled pools), one overall rate hides that int8 may agree on one kind of photograph and not another."""
    ref_logits, logits = np.asarray(ref_logits), np.asarray(logits)
    if len(groups) != len(logits):
        raise ValueError(f"{len(groups)} group names for {len(logits)} rows")
    same = ref_logits.argmax(1) == logits.argmax(1)
    names = np.asarray(groups, dtype=object)
    return {g: {"images": int((names == g).sum()), "agreement": float(same[names == g].mean())}
            for g in dict.fromkeys(groups)}


def error_scale_needed(ref_logits: np.ndarray, logits: np.ndarray, min_agreement: float, steps: int = 20) -> float:
    """How small the error ``logits - ref_logits`` would have to be, as a fraction of what it is, for top-1
    agreement ``min_agreement`` on these rows: the largest ``s`` in [0, 1] (bisected; agreement grows as ``s`` falls,
    up to near-ties) with ``agreement(ref, ref + s * (logits - ref)) >= min_agreement``. 1.0: already there; a small
    value: the fp32 margins of many rows are far below the error, and only a much more faithful model will do."""
    ref_logits, logits = np.asarray(ref_logits, np.float64), np.asarray(logits, np.float64)
    err = logits - ref_logits
    if agreement(ref_logits, logits) >= min_agreement:
        return 1.0
    lo, hi = 0.0, 1.0  # lo meets the floor (s = 0 is the reference itself), hi does not
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if agreement(ref_logits, ref_logits + mid * err) >= min_agreement else (lo, mid)
    return lo


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``logits`` on ``labels``."""
    labels = np.asarray(labels)
    return float((np.asarray(logits).argmax(1) == labels).mean()) if len(labels) else 0.0


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax of one row of logits."""
    e = np.exp(x - x.max())
    return e / e.sum()


def top_k(p: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest, best first (argpartition: O(n), not a full sort of 1000 classes)."""
    k = min(k, p.size)
    if k == 1:
        return np.array([p.argmax()])
    part = np.argpartition(-p, k - 1)[:k]
    return part[np.argsort(-p[part], kind="stable")]


def top_k_softmax(logits: np.ndarray, k: int):
    """(indices, probabilities) of the k most likely classes of one row, without normalising all of them.

    Softmax keeps the order, so the top k come from the logits; only their k probabilities are divided
    out. Right after inference this is 0.06 ms for 1000 classes against 0.11 ms for a full softmax + top-k.
    """
    top = top_k(logits, k)
    e = np.exp(logits - logits[top[0]])
    return top, e[top] / e.sum()


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


# fp32's top-1 probability from which its class outweighs all the others together: an image int8 moves off a class
# fp32 gave at least this is a change fp32 itself did not hesitate over.
SURE = 0.5


def changed_confidences(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """fp32's top-1 probability on each row whose top-1 class ``logits`` changed (float64, in row order)."""
    ref_logits = np.asarray(ref_logits, np.float64)
    rows = ref_logits.argmax(1) != np.asarray(logits).argmax(1)
    ref = ref_logits[rows]
    if not len(ref):
        return np.zeros(0)
    e = np.exp(ref - ref.max(1, keepdims=True))
    return e.max(1) / e.sum(1)


def class_changes(confidences: np.ndarray) -> Dict[str, Any]:
    """What :func:`changed_confidences` found, in numbers: how many rows changed class (``changed``), how many of
    those fp32 gave at least :data:`SURE` (``changed_fp32_sure``), and fp32's median top-1 probability over them
    (``changed_fp32_median_prob``; None when none changed). Agreement counts a near-tie that int8 tips the other way
    like a sure answer it overturns; these tell the two apart."""
    c = np.asarray(confidences, np.float64)
    return {"changed": int(len(c)), "changed_fp32_sure": int((c >= SURE).sum()),
            "changed_fp32_median_prob": float(np.median(c)) if len(c) else None}


def describe_changes(changes: Dict[str, Any]) -> str:
    """One phrase for reports and refusals: "33 changed class, 2 of them where fp32 was >= 50% sure (median fp32
    top-1 probability 0.16)"."""
    n = changes["changed"]
    if not n:
        return "none changed class"
    return (f"{n} changed class, {changes['changed_fp32_sure']} of them where fp32 was >= {SURE:.0%} sure (median "
            f"fp32 top-1 probability {changes['changed_fp32_median_prob']:.2f})")


def fidelity(ref_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """How closely a compressed model follows its fp32 reference on the same inputs: top-1 agreement, mean
    KL(fp32 || compressed) of the softmax outputs, the worst per-class top-1 drop in points (over the
    classes present in ``labels``), and how sure fp32 was of the images whose class changed (:func:`class_changes`)."""
    labels = np.asarray(labels)
    ref_hit, hit = ref_logits.argmax(1) == labels, logits.argmax(1) == labels
    worst, worst_cls = 0.0, None
    for c in np.unique(labels):
        m = labels == c
        d = (ref_hit[m].mean() - hit[m].mean()) * 100
        if worst_cls is None or d > worst:
            worst, worst_cls = float(d), int(c)
    return {"agreement": agreement(ref_logits, logits),
            "mean_kl": mean_kl(ref_logits, logits),
            "worst_class_drop": worst, "worst_class": worst_cls, **class_changes(changed_confidences(ref_logits, logits))}
