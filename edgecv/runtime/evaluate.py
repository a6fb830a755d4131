"""``edgecv eval BUNDLE``: top-1/top-5 through the runtime (numpy/OpenCV preprocessing, no torch)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from edgecv.data.errors import DatasetError
from edgecv.runtime.preprocess import Preprocessor, load_image


def labelled_frames(data: str, channels: int, limit: Optional[int] = None) -> Tuple[int, Iterator]:
    """(count, iterator of (frame or None, label, name)) for a Fashion-MNIST folder or an image folder."""
    p = Path(data)
    if p.is_dir() and any(p.glob("t10k-images-idx3-ubyte*")):
        from edgecv.data.fashion_mnist import load_fashion_mnist

        x, y = load_fashion_mnist(p, "test")
        n = min(limit or len(y), len(y))
        return n, ((x[i], int(y[i]), f"t10k[{i}]") for i in range(n))
    from edgecv.data.folders import list_images

    images = list_images(p, verify=False)
    samples = images.samples[:limit] if limit else images.samples
    return len(samples), ((load_image(s, channels), lbl, s) for s, lbl in samples)


def eval_bundle(bundle_dir: str, data: str, backend: str = "auto", limit: Optional[int] = None,
                batch: int = 32, show_progress: bool = True) -> Dict:
    from edgecv.runtime.bundle import open_bundle
    from edgecv.runtime.select import open_backend

    bundle = open_bundle(bundle_dir)
    pre = Preprocessor(bundle.preprocess)
    be, info = open_backend(bundle_dir, backend)
    n, frames = labelled_frames(data, pre.channels, limit)
    c1 = c5 = seen = 0
    skipped: List[str] = []
    xs, ys = [], []

    def flush():
        nonlocal c1, c5, seen
        if not xs:
            return
        logits = be.infer(np.stack(xs))
        top = np.argsort(-logits, 1)[:, :5]
        y = np.asarray(ys)
        c1 += int((top[:, 0] == y).sum())
        c5 += int((top == y[:, None]).any(1).sum())
        seen += len(ys)
        xs.clear()
        ys.clear()

    for frame, label, name in tqdm(frames, total=n, desc="eval", disable=not show_progress, leave=False):
        if frame is None:
            skipped.append(name)
            continue
        xs.append(pre(frame))
        ys.append(label)
        if len(xs) == batch:
            flush()
    flush()
    be.close()
    if seen == 0:
        raise DatasetError(f"{data}: no readable images ({len(skipped)} skipped)")
    return {"top1": c1 / seen, "top5": c5 / seen, "n": seen, "skipped": len(skipped), "backend": info["backend"],
            "artifact": info["file"], "precision": info["precision"]}
