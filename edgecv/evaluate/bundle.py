"""``edgecv eval BUNDLE``: top-1/top-5 through the runtime (numpy/OpenCV preprocessing, no torch)."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from edgecv.bundle.seen import read_seen, seen_key
from edgecv.data.classes import match_classes
from edgecv.errors import DatasetError
from edgecv.metrics import changed_confidences, class_changes, kl_rows, topk_correct
from edgecv.runtime.preprocess import load_image
from edgecv.utils.io import sha256_array, sha256_file
from edgecv.utils.progress import progress
from edgecv.utils.sampling import evenly_spaced

log = logging.getLogger("edgecv.eval")


class LabelledImages:
    """A Fashion-MNIST test split or an image folder as labelled frames: ``n`` (at most that many), ``classes``, and,
    iterated, ``(frame or None when unreadable, label, name)``. With ``limit``, that many images spread evenly over
    it (a folder lists its images class by class). Images whose identity is in ``seen`` (keys of the bundle's
    ``seen_images.txt``, edgecv.bundle.seen) are left out and counted in ``left_out``; under a limit, the next
    images not spread over take their place, as the export's evaluation split does."""

    def __init__(self, data: str, channels: int, limit: Optional[int] = None,
                 seen: Optional[FrozenSet[str]] = None):
        from edgecv.data.fashion_mnist import CLASSES, is_fashion_mnist_dir
        from edgecv.utils.images import MAX_FILE_BYTES

        p, self.channels, self.seen, self.left_out = Path(data), channels, seen or frozenset(), 0
        self.max_bytes = MAX_FILE_BYTES  # per image, the most a file may hold (it is refused when loaded)
        if is_fashion_mnist_dir(p):
            from edgecv.data.fashion_mnist import load_fashion_mnist

            self.x, y = load_fashion_mnist(p, "test")
            self.samples, self.classes = [(f"t10k[{i}]", int(label)) for i, label in enumerate(y)], list(CLASSES)
        else:
            from edgecv.data.folders import list_images

            images = list_images(p, verify=False)
            self.x, self.samples, self.classes = None, images.samples, images.classes
        total = len(self.samples)
        self.limit = min(limit or total, total)
        spread = evenly_spaced(total, self.limit)
        # the rest stand in for seen images only under a limit; without one, every image is spread over
        self.order = spread + (sorted(set(range(total)) - set(spread)) if self.seen else [])
        self.n = self.limit

    def _seen(self, i: int) -> bool:
        if not self.seen:
            return False
        if self.x is not None:
            return seen_key(sha256_array(self.x[i])) in self.seen
        path = self.samples[i][0]
        try:  # a file too large to be an image is refused when it is loaded: never hashed whole first
            return os.stat(path).st_size <= self.max_bytes and seen_key(sha256_file(path)) in self.seen
        except OSError:
            return False  # unreadable: counted as skipped when it is loaded

    def __iter__(self) -> Iterator[Tuple[Optional[np.ndarray], int, str]]:
        taken, self.left_out = 0, 0
        for i in self.order:
            if taken == self.limit:
                return
            if self._seen(i):
                self.left_out += 1
                continue
            taken += 1
            name, label = self.samples[i]
            yield (self.x[i] if self.x is not None else load_image(name, self.channels)), label, name


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
    include_seen: bool = False  # also judge images the bundle was made with (edgecv.bundle.seen), left out otherwise


class _Tally:
    """Top-1/top-5 counts and, against fp32, the streamed fidelity of one evaluation."""

    def __init__(self, clf, ref, mapping):
        self.clf, self.ref, self.mapping = clf, ref, mapping
        self.c1 = self.c5 = self.seen = 0
        self.fid = {"agree": 0, "kl": 0.0, "hit": None, "ref_hit": None, "count": None, "changed": []}

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
        images = unseen_images(clf.bundle, data, clf.pre.channels, o)
        mapping = match_bundle_classes(images, clf.labels, data, bundle_dir, o)
        if o.against_fp32:
            ref = Classifier(clf.bundle, clf.info["backend"], "fp32", dla_core=o.dla_core)
        batch = min(o.batch, clf.backend.max_batch or o.batch, (ref and ref.backend.max_batch) or o.batch)
        tally = _Tally(clf, ref, mapping)
        skipped = _feed(tally, images, images.n, batch, o.show_progress)
    finally:
        clf.close()
        if ref is not None:
            ref.close()
    check_unseen_left(images, data, tally.seen, skipped)
    info, seen = clf.info, tally.seen
    extra = finish_fidelity(tally.fid, seen, clf.labels) if ref is not None else {}
    return {**extra, "top1": tally.c1 / seen, "top5": tally.c5 / seen, "n": seen, "skipped": skipped,
            "left_out_seen": images.left_out if images.seen else None,
            "backend": info["backend"], "artifact": info["file"], "precision": info["precision"],
            "chosen_by": info.get("chosen_by"), "fallback": info.get("fallback")}


def match_bundle_classes(images: LabelledImages, labels: Sequence[str], data: str, bundle_dir,
                         o: EvalOptions) -> Optional[np.ndarray]:
    """Map ``images``' classes to the bundle's ``labels`` by name (edgecv.data.classes.match_classes)."""
    return match_classes(images.classes, labels, data, f"bundle {bundle_dir}", o.allow_subset,
                         subset_hint="--allow-missing-classes judges data that holds only some of them")


def unseen_images(bundle, data: str, channels: int, o: EvalOptions) -> LabelledImages:
    """``data`` as :class:`LabelledImages`, less the images ``bundle`` was made with (unless ``o.include_seen``)."""
    seen = None if o.include_seen else read_seen(bundle)
    if seen is None and not o.include_seen:
        log.info("%s records no seen images (exported before edgecv kept them): DATA is not screened for the "
                 "images it was trained, calibrated or tuned on", bundle.root)
    return LabelledImages(data, channels, o.limit, seen)


def check_unseen_left(images: LabelledImages, data: str, judged: int, skipped: int) -> None:
    """Say how many images of ``data`` were left out as seen; refuse when nothing else is left to judge."""
    if images.left_out:
        log.warning("%d image(s) of %s were left out: the bundle was trained, calibrated or tuned on them "
                    "(its seen_images.txt); a number measured on them would flatter it (--include-seen keeps them)",
                    images.left_out, data)
    if judged == 0 and images.left_out:
        raise DatasetError(f"{data}: every readable image is one the bundle was trained, calibrated or tuned on "
                           f"({images.left_out} left out, {skipped} unreadable); evaluate on images that chose "
                           "nothing, or pass --include-seen")
    if judged == 0:
        raise DatasetError(f"{data}: no readable images ({skipped} skipped)")


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
    acc["changed"].extend(changed_confidences(ref_logits, logits).tolist())  # one float per change: few
    for key, hits in (("count", None), ("ref_hit", ref_logits.argmax(1) == y), ("hit", logits.argmax(1) == y)):
        counts = np.bincount(y, weights=hits, minlength=k) if hits is not None else np.bincount(y, minlength=k)
        acc[key] = counts if acc[key] is None else acc[key] + counts


def finish_fidelity(acc: Dict, n: int, labels: Sequence[str]) -> Dict:
    """The fidelity of :func:`accumulate_fidelity`'s counts over ``n`` images. ``worst_class`` is the label name of
    the class that lost the most top-1, None when none lost any (an arbitrary class would read as a finding)."""
    present = np.flatnonzero(acc["count"])
    drops = (acc["ref_hit"][present] - acc["hit"][present]) / acc["count"][present] * 100
    i = int(np.argmax(drops)) if len(drops) else None
    lost = i is not None and drops[i] > 0
    return {"agreement_with_fp32": acc["agree"] / n, "mean_kl": acc["kl"] / n,
            "worst_class_drop": float(drops[i]) if i is not None else 0.0,
            "worst_class": labels[int(present[i])] if lost else None, **class_changes(acc["changed"])}
