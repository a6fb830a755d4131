"""Which images an export reads, for what, and at which size: calibration and evaluation images kept disjoint by
content, the tune split taken off the held-out images (at the shipped size and, with ``--input-size``, at the
source's), the pooled images for calibration, tune agreement and QAT, and where each tune image came from.

Each stage takes the export's ``ExportRun`` (edgecv.export.pipeline) and fills in its image sets.
"""
from __future__ import annotations

import logging
from typing import Any, List, Tuple

from edgecv.errors import ExportError

log = logging.getLogger("edgecv.export")


def image_sets(run) -> None:
    """Calibration and evaluation images, disjoint by content; the tune split taken off the held-out images (and,
    with pools, pooled images for calibration, the tune split's agreement part and the QAT rung)."""
    from edgecv.export.data import calib_and_eval_sets, evaluation_images

    opts = run.opts
    if opts.calib_pools is not None:
        with run.stages("evaluation images"):
            ev = evaluation_images(run.data, opts.eval, opts.eval_limit, show_progress=run.show_progress)
        cal = None
    else:
        with run.stages("calibration and evaluation images"):
            cal, ev = calib_and_eval_sets(run.data, opts.calib, opts.eval, opts.calib_samples, opts.eval_limit,
                                          seed=opts.calib_seed, show_progress=run.show_progress)
    copies = ev.training_copies
    tune, ev = tune_and_evaluation(run, ev)
    run.tune_src, run.ev_src = source_size_sets(run, cal, tune, ev)
    if cal is None:
        cal = pooled_sets(run, set(ev.ids) | set(tune.ids))
    overlap = len(set(ev.ids) & set(cal.ids))
    run.summary["calibration"] = {"source": cal.source, "samples": len(cal), "method": opts.calib_method,
                                  "definition": opts.calib_set, **cal.record()}
    run.summary["evaluation"] = {**ev.record(), "disjoint_from_calibration": overlap == 0,
                                 "disjoint_from_tune": not set(ev.ids) & set(tune.ids),
                                 "left_out_as_calibration_images": ev.excluded_overlap,
                                 # held out by the recipe, but byte-for-byte copies of its training images
                                 "left_out_as_copies_of_training_images": copies}
    run.summary["tune"] = {**tune.record(), "used_for": "per-layer fallback (top-1 drop and agreement budget)"}
    _warn_if_too_few(run, len(ev))
    if overlap:
        raise ExportError(f"{overlap} evaluation images are also calibration images")  # never reported as held out
    run.cal, run.ev, run.tune = cal, ev, tune  # tune: an ArraySet until export_fp32
    run.seen.update(calibration=list(cal.ids), tune=list(tune.ids) + (run.agree.ids if run.agree is not None else []))
    run.seen.setdefault("qat", list(cal.ids))  # the calibration images, unless the pools gave QAT its own
    run.qat_images = run.qat_images or cal


def _warn_if_too_few(run, n: int) -> None:
    """Record, and say, when the evaluation split is too small for its agreement verdict to mean anything."""
    from edgecv.metrics import Budget, unseen_change_bound

    budget = Budget(run.opts.max_drop, run.opts.min_agreement)
    needed = budget.images_to_show_agreement()
    run.summary["evaluation"]["images_to_show_agreement"] = needed
    if n < needed:
        log.warning("%d evaluation image(s) cannot show %.1f%% agreement with fp32: with none changing class, "
                    "the 95%% bound on the share that could is still %.1f%% (3/n); it takes %d (raise "
                    "export.eval_limit, or hold out more images)", n, 100 * budget.min_agreement,
                    100 * unseen_change_bound(n), needed)


def tune_and_evaluation(run, held_out) -> Tuple[Any, Any]:
    """The held-out images' labels in the model's class order, split into (tune, evaluation): the one split both
    input sizes use."""
    from edgecv.data.classes import apply_mapping, match_classes
    from edgecv.export.data import split_off

    # the recipe's own held-out split may lack a class, as training scored it (edgecv.data.loaders.load_data)
    held_out.y = apply_mapping(held_out.y, match_classes(held_out.classes, run.src.classes, held_out.source,
                                                         run.source, allow_subset=run.opts.eval is None))
    return split_off(held_out, run.opts.tune_fraction, run.opts.calib_seed)


def source_size_sets(run, cal, tune, ev) -> Tuple[Any, Any]:
    """The tune and evaluation images at the source's input size, for the source's own numbers (``tune`` and
    ``ev`` themselves when the input size is unchanged): the same images, split the same way."""
    from edgecv.export.data import evaluation_images

    if not run.resized:
        return tune, ev
    o = run.opts
    with run.stages(f"evaluation images at the source's {run.src.data.input_size} px"):
        full = evaluation_images(run.src.data, o.eval, o.eval_limit, set(cal.ids) if cal is not None else frozenset(),
                                 run.show_progress)
    tune_src, ev_src = tune_and_evaluation(run, full)
    if tune_src.ids != tune.ids or ev_src.ids != ev.ids:  # the files changed between the two reads
        raise ExportError(f"{full.source}: the evaluation images changed while they were read; run the export again")
    return tune_src, ev_src


def pooled_sets(run, exclude) -> Any:
    """Calibration images from the calibration set's pools; the pooled agreement images (for the tune split) and the
    QAT rung's images kept on ``run``; returns the calibration images."""
    from edgecv.export.data import members_digest, pooled_images
    from edgecv.export.pools import draw_pools

    o, cfg, show = run.opts, run.data, run.show_progress
    with run.stages("image pools (calibration, agreement, QAT), disjoint from evaluation and tune by content"):
        draw = draw_pools(o.calib_pools, exclude, o.calib_samples, o.calib_seed)
        cal = pooled_images(draw.calibration, cfg, "pooled calibration images", show)
        run.agree = pooled_images(draw.agreement, cfg, "pooled agreement images", show) if draw.agreement else None
        run.qat_images = pooled_images(draw.qat, cfg, "pooled QAT images", train=True)
        run.seen["qat"] = [d for _, d, _ in draw.qat]
    run.summary["pools"] = draw.record
    run.summary["tune_agreement_images"] = {"images": len(draw.agreement), "from": "pools (no labels: agreement only)",
                                            "members_sha256": members_digest([d for _, d, _ in draw.agreement])}
    return cal


def tune_sources(run) -> List[str]:
    """Where each tune image came from, in the tune split's order: the labelled held-out images, then each pool's."""
    labelled = [f"{run.tune.source} (labelled)"] * len(run.tune.x)
    return labelled + ([f"{o} (pool)" for o in run.agree.origins] if run.agree is not None else [])


def write_seen_images(run) -> dict:
    """Write the bundle's record of the images that chose something in it (edgecv.bundle.seen): the recipe's training
    split (training, distillation), the calibration and tune images and, when the QAT rung distilled, its images.
    Returns the manifest's summary of it."""
    from edgecv.bundle.names import SEEN_IMAGES
    from edgecv.bundle.seen import seen_key, seen_text
    from edgecv.data.loaders import training_identities
    from edgecv.utils.io import atomic_write_text

    # the QAT rung's pooled images chose something only when it trained on them (block-wise reconstruction fits on
    # the calibration images)
    distilled = bool(run.qat) and run.qat["info"]["method"] == "distill"
    uses = {k: v for k, v in run.seen.items() if k != "qat" or distilled}
    if run.recipe is not None:  # empty for Fashion-MNIST's arrays: eval reads their test split only
        uses["training"] = sorted(training_identities(run.recipe.data))
    text = seen_text(i for ids in uses.values() for i in ids)
    atomic_write_text(run.tmp / SEEN_IMAGES, text)
    return {"file": SEEN_IMAGES, "images": text.count("\n"),
            "by_use": {use: len({seen_key(i) for i in ids}) for use, ids in uses.items() if ids}}
