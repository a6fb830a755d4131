"""``edgecv eval BUNDLE``: top-1/top-5 through the runtime (numpy/OpenCV preprocessing, no torch)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from edgecv.data.classes import match_classes
from edgecv.errors import DatasetError
from edgecv.metrics import kl_rows, topk_correct
from edgecv.runtime.preprocess import Preprocessor, load_image


def labelled_frames(data: str, channels: int, limit: Optional[int] = None) -> Tuple[int, List[str], Iterator]:
    """(count, class names, iterator of (frame or None, label, name)) for a Fashion-MNIST or an image folder."""
    from edgecv.data.fashion_mnist import CLASSES, is_fashion_mnist_dir

    p = Path(data)
    if is_fashion_mnist_dir(p):
        from edgecv.data.fashion_mnist import load_fashion_mnist

        x, y = load_fashion_mnist(p, "test")
        n = min(limit or len(y), len(y))
        return n, list(CLASSES), ((x[i], int(y[i]), f"t10k[{i}]") for i in range(n))
    from edgecv.data.folders import list_images

    images = list_images(p, verify=False)
    samples = images.samples[:limit] if limit else images.samples
    return len(samples), images.classes, ((load_image(s, channels), lbl, s) for s, lbl in samples)


def eval_bundle(bundle_dir, data: str, backend: str = "auto", limit: Optional[int] = None,
                batch: int = 32, show_progress: bool = True, allow_subset: bool = False, dla_core: int = -1,
                against_fp32: bool = False, precision: Optional[str] = None) -> Dict:
    """Top-1/top-5 of a bundle's default artefact on ``data``, whose classes must match the bundle's labels.

    ``against_fp32``: also run the bundle's fp32 artefact (same target) on the same inputs and report the
    fidelity of the default one: top-1 agreement, mean KL divergence, worst per-class top-1 drop.
    """
    from edgecv.bundle.reader import open_bundle
    from edgecv.runtime.select import open_backend

    bundle = open_bundle(bundle_dir)
    labels = bundle.labels
    pre = Preprocessor(bundle.preprocess)
    n, classes, frames = labelled_frames(data, pre.channels, limit)
    mapping = match_classes(classes, labels, data, f"bundle {bundle_dir}", allow_subset)
    be, info = open_backend(bundle, backend, precision, dla_core=dla_core)
    batch = min(batch, be.max_batch or batch)  # a TensorRT engine takes up to the batch it was built for
    ref = None
    if against_fp32:
        ref, ref_info = open_backend(bundle, info["backend"], "fp32", dla_core=dla_core)
        batch = min(batch, ref.max_batch or batch)
    fid = {"agree": 0, "kl": 0.0, "hit": None, "ref_hit": None, "count": None}
    c1 = c5 = seen = 0
    skipped: List[str] = []
    xs, ys = [], []

    def flush():
        nonlocal c1, c5, seen
        if not xs:
            return
        y = np.asarray(ys)
        y = y if mapping is None else mapping[y]
        batch_x = np.stack(xs)
        logits = be.infer(batch_x)
        a1, a5 = topk_correct(logits, y)
        c1, c5, seen = c1 + a1, c5 + a5, seen + len(ys)
        if ref is not None:
            accumulate_fidelity(fid, ref.infer(batch_x), logits, y)
        xs.clear()
        ys.clear()

    try:
        for frame, label, name in tqdm(frames, total=n, desc="eval", disable=not show_progress, leave=False):
            if frame is None:
                skipped.append(name)
                continue
            xs.append(pre(frame))
            ys.append(label)
            if len(xs) == batch:
                flush()
        flush()
    finally:
        be.close()
        if ref is not None:
            ref.close()
    if seen == 0:
        raise DatasetError(f"{data}: no readable images ({len(skipped)} skipped)")
    extra = finish_fidelity(fid, seen) if ref is not None else {}
    return {**extra, "top1": c1 / seen, "top5": c5 / seen, "n": seen, "skipped": len(skipped), "backend": info["backend"],
            "artifact": info["file"], "precision": info["precision"], "chosen_by": info.get("chosen_by"),
            "fallback": info.get("fallback")}


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
