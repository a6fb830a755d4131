"""Unlabelled image pools for an export (a calibration set's ``pools``, edgecv.export.calibration_set).

Agreement with fp32 needs no labels, so any photograph serves calibration, the agreement part of the tune split and
quantization-aware training. Every pooled image is identified by the sha256 of its bytes: duplicates across pools
count once, and an image that is also an evaluation or tune image is left out (the evaluation split stays the one
that chose nothing). The draw is seeded: the same folders and seed give the same images.

The pooled images are dealt out in this order: ``agreement`` images for the tune split, then ``samples`` for
calibration, then ``qat`` for the QAT rung (after the calibration images, which QAT may also train on, but never on
an agreement image: those judge what QAT did).
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from edgecv.errors import DatasetError

log = logging.getLogger("edgecv.export")


@dataclass
class PoolDraw:
    """The pooled images dealt out to their uses: ``(path, sha256, pool folder)`` each."""

    agreement: List[Tuple[str, str, str]] = field(default_factory=list)
    calibration: List[Tuple[str, str, str]] = field(default_factory=list)
    qat: List[Tuple[str, str, str]] = field(default_factory=list)
    record: Dict = field(default_factory=dict)


def pool_files(folder: str) -> List[str]:
    """Every image file under ``folder`` (recursively, sorted: the draw does not depend on listing order)."""
    from edgecv.utils.images import image_files

    files = [f for f in image_files(folder) if os.path.isfile(f)]
    if not files:
        raise DatasetError(f"{folder}: no images in this pool")
    return files


def _draw(pools, exclude: Set[str], seed: int) -> Tuple[List[Tuple[str, str, str]], List[Dict]]:
    """Each pool's ``take`` images (seeded), readable, not excluded and not already drawn from another pool."""
    from edgecv.data.folders import check_image
    from edgecv.data.loaders import content_hash

    drawn, seen, records = [], set(), []
    for i, pool in enumerate(pools):
        files = pool_files(pool.images)
        random.Random(seed * 1000 + i).shuffle(files)
        rec = {"images": pool.images, "files": len(files), "taken": 0, "evaluation_images_left_out": 0,
               "duplicates": 0, "unreadable": 0}
        for f in files:
            if pool.take is not None and rec["taken"] >= pool.take:
                break
            digest = content_hash(f)
            if digest in exclude:
                rec["evaluation_images_left_out"] += 1
            elif digest in seen:
                rec["duplicates"] += 1
            elif check_image(f) is not None:
                rec["unreadable"] += 1
            else:
                seen.add(digest)
                drawn.append((f, digest, pool.images))
                rec["taken"] += 1
        records.append(rec)
    return drawn, records


def draw_pools(cs, exclude: Set[str], samples: int, seed: Optional[int] = None) -> PoolDraw:
    """Deal the pooled images of calibration set ``cs`` out to agreement, calibration and QAT (``samples``
    calibration images: the set's, or what ``--calib-samples`` says)."""
    seed = cs.seed if seed is None else seed
    drawn, records = _draw(cs.pools, exclude, seed)
    random.Random(seed).shuffle(drawn)  # the uses get a mix of every pool
    need = cs.agreement + samples
    if len(drawn) < need:
        raise DatasetError(f"the pools hold {len(drawn)} usable images, fewer than agreement {cs.agreement} + "
                           f"calibration {samples}; take more, or lower them")
    d = PoolDraw(drawn[: cs.agreement], drawn[cs.agreement: need])
    fit = drawn[cs.agreement:]  # calibration first, then the rest: QAT never sees an agreement image
    d.qat = fit[: cs.qat] if cs.qat else d.calibration
    for rec in records:
        rec["used_for"] = {use: sum(1 for _, _, p in getattr(d, use) if p == rec["images"])
                           for use in ("agreement", "calibration", "qat")}
    d.record = {"pools": records, "seed": seed, "agreement": len(d.agreement), "calibration": len(d.calibration),
                "qat": len(d.qat), "disjoint_from_evaluation_and_tune": True}
    log.info("pools: %s", ", ".join(f"{r['images']}: {r['taken']}" for r in records))
    return d
