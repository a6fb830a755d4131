"""``edgecv eval BUNDLE``: top-1/top-5 through the runtime (numpy/OpenCV preprocessing, no torch)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from edgecv.data.classes import match_classes
from edgecv.errors import DatasetError
from edgecv.metrics import kl_rows, topk_correct
from edgecv.runtime.preprocess import load_image
from edgecv.utils.progress import progress
from edgecv.utils.sampling import evenly_spaced


def labelled_frames(data: str, channels: int, limit: Optional[int] = None) -> Tuple[int, List[str], Iterator]:
    """(count, class names, iterator of (frame or None, label, name)) for a Fashion-MNIST or an image folder; with
    ``limit``, that many images spread evenly over it (a folder lists its images class by class)."""
    from edgecv.data.fashion_mnist import CLASSES, is_fashion_mnist_dir

    p = Path(data)
    if is_fashion_mnist_dir(p):
        from edgecv.data.fashion_mnist import load_fashion_mnist

        x, y = load_fashion_mnist(p, "test")
        idx = evenly_spaced(len(y), limit or len(y))
        return len(idx), list(CLASSES), ((x[i], int(y[i]), f"t10k[{i}]") for i in idx)
    from edgecv.data.folders import list_images

    images = list_images(p, verify=False)
    samples = [images.samples[i] for i in evenly_spaced(len(images.samples), limit or len(images.samples))]
    return len(samples), images.classes, ((load_image(s, channels), lbl, s) for s, lbl in samples)


@dataclass
class EvalOptions:
    """How ``edgecv eval BUNDLE`` runs: the backend and precision (as ``edgecv run``'s), ``limit`` images spread over the data,
    the batch, and ``against_fp32``: also run the bundle's fp32 artefact (same target) on the same inputs and report
    the fidelity of the default one (top-1 agreement, mean KL divergence, worst per-class top-1 drop)."""

    backend: str = "auto"
    precision: Optional[str] = None
    limit: Optional[int] = None
    batch: int = 32
    show_progress: bool = True
    allow_subset: bool = False  # data may hold only some of the bundle's classes (matched by name)
    dla_core: int = -1
    against_fp32: bool = False


class _Tally:
    """Top-1/top-5 counts and, against fp32, the streamed fidelity of one evaluation."""

    def __init__(self, clf, ref, mapping):
        self.clf, self.ref, self.mapping = clf, ref, mapping
        self.c1 = self.c5 = self.seen = 0
        self.fid = {"agree": 0, "kl": 0.0, "hit": None, "ref_hit": None, "count": None}

    def add(self, xs: List[np.ndarray], ys: List[int]) -> None:
        y = np.asarray(ys)
        y = y if self.mapping is None else self.mapping[y]
        batch_x = np.stack(xs)
        logits = self.clf.backend.infer(batch_x)
        a1, a5 = topk_correct(logits, y)
        self.c1, self.c5, self.seen = self.c1 + a1, self.c5 + a5, self.seen + len(ys)
        if self.ref is not None:
            accumulate_fidelity(self.fid, self.ref.backend.infer(batch_x), logits, y)


def eval_bundle(bundle_dir, data: str, options: Optional[EvalOptions] = None, **fields) -> Dict:
    """Top-1/top-5 of a bundle's default artefact on ``data``, whose classes must match the bundle's labels.
    Options come as an :class:`EvalOptions`, or as its fields by name."""
    from edgecv.runtime.classifier import Classifier

    o = dataclasses.replace(options or EvalOptions(), **fields)
    clf = Classifier(bundle_dir, o.backend, o.precision, dla_core=o.dla_core)
    ref = None
    try:
        n, classes, frames = labelled_frames(data, clf.pre.channels, o.limit)
        mapping = match_classes(classes, clf.labels, data, f"bundle {bundle_dir}", o.allow_subset)
        if o.against_fp32:
            ref = Classifier(clf.bundle, clf.info["backend"], "fp32", dla_core=o.dla_core)
        batch = min(o.batch, clf.backend.max_batch or o.batch, (ref and ref.backend.max_batch) or o.batch)
        tally = _Tally(clf, ref, mapping)
        skipped = _feed(tally, frames, n, batch, o.show_progress)
    finally:
        clf.close()
        if ref is not None:
            ref.close()
    if tally.seen == 0:
        raise DatasetError(f"{data}: no readable images ({skipped} skipped)")
    info, seen = clf.info, tally.seen
    extra = finish_fidelity(tally.fid, seen) if ref is not None else {}
    return {**extra, "top1": tally.c1 / seen, "top5": tally.c5 / seen, "n": seen, "skipped": skipped,
            "backend": info["backend"], "artifact": info["file"], "precision": info["precision"],
            "chosen_by": info.get("chosen_by"), "fallback": info.get("fallback")}


def _feed(tally: _Tally, frames, n: int, batch: int, show_progress: bool) -> int:
    """Every readable frame into ``tally``, in batches; how many frames were skipped (unreadable)."""
    xs, ys, skipped = [], [], 0
    for frame, label, _name in progress(frames, total=n, desc="eval", show=show_progress):
        if frame is None:
            skipped += 1
            continue
        xs.append(tally.clf.pre(frame))
        ys.append(label)
        if len(xs) == batch:
            tally.add(xs, ys)
            xs, ys = [], []
    if xs:
        tally.add(xs, ys)
    return skipped


def accumulate_fidelity(acc: Dict, ref_logits: np.ndarray, logits: np.ndarray, y: np.ndarray) -> None:
    """Streaming form of edgecv.metrics.fidelity (any dataset size in constant memory)."""
    k = logits.shape[1]
    acc["kl"] += float(kl_rows(ref_logits, logits).sum())
    acc["agree"] += int((ref_logits.argmax(1) == logits.argmax(1)).sum())
    for key, hits in (("count", None), ("ref_hit", ref_logits.argmax(1) == y), ("hit", logits.argmax(1) == y)):
        counts = np.bincount(y, weights=hits, minlength=k) if hits is not None else np.bincount(y, minlength=k)
        acc[key] = counts if acc[key] is None else acc[key] + counts


def finish_fidelity(acc: Dict, n: int) -> Dict:
    present = np.flatnonzero(acc["count"])
    drops = (acc["ref_hit"][present] - acc["hit"][present]) / acc["count"][present] * 100
    i = int(np.argmax(drops)) if len(drops) else None
    return {"agreement_with_fp32": acc["agree"] / n, "mean_kl": acc["kl"] / n,
            "worst_class_drop": float(drops[i]) if i is not None else 0.0,
            "worst_class": int(present[i]) if i is not None else None}
