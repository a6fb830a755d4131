"""Robustness under corruption: fp32 and each compressed artefact on the same corrupted images.

Vehicles see fog, night, blur and sensor noise, and a compressed model can lose more under corruption than on
clean images. For each corruption (edgecv.data.corruptions) and severity, every model runs the same corrupted
inputs; the report gives its top-1 and its top-1 agreement with fp32 under that corruption, and per model the
*extra drop*: how many more points it loses to fp32 under a corruption than on the clean images
((fp32_c - model_c) - (fp32_clean - model_clean), averaged over severities). The worst corruption's extra drop
is what ``export --max-corruption-drop`` budgets. numpy and OpenCV only (runs on the device too).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from edgecv.bundle.golden import to_inputs
from edgecv.bundle.names import CORRUPTIONS_JSON, CORRUPTIONS_MD, CORRUPTIONS_PNG
from edgecv.data.corruptions import CORRUPTIONS, corrupt
from edgecv.metrics import agreement, top1
from edgecv.utils.outputs import output_folder
from edgecv.utils.progress import progress

Runner = Callable[[np.ndarray], np.ndarray]


def _logits(run: Runner, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([run(np.ascontiguousarray(x[i: i + batch])) for i in range(0, len(x), batch)])


def corruption_report(runs: Dict[str, Runner], ref: str, pixels: np.ndarray, y: np.ndarray, spec: Dict,
                      names: Sequence[str], severities: Sequence[int], **options) -> Dict:
    """``runs`` maps a label to a function (float inputs -> logits); ``ref`` is the fp32 label. ``pixels`` are
    the uint8 [N, C, H, W] crops the inputs are normalised from (``spec``: preprocess.json). ``options``:
    ``seed`` (0; each image's corruption is seeded from it), ``batch`` (32), ``show_progress`` (True)."""
    unknown = set(options) - {"seed", "batch", "show_progress"}
    if unknown:
        raise TypeError(f"corruption_report: unknown option(s) {', '.join(sorted(unknown))}")
    seed, batch, show_progress = options.get("seed", 0), options.get("batch", 32), options.get("show_progress", True)
    if ref not in runs:
        raise ValueError(f"reference {ref!r} is not among the models")
    clean_x = to_inputs(pixels, spec)
    clean = {k: _logits(f, clean_x, batch) for k, f in runs.items()}
    clean_top1 = {k: top1(v, y) for k, v in clean.items()}
    rows: List[Dict] = []
    todo = [(n, s) for n in names for s in severities]
    for name, sev in progress(todo, desc="corruptions", show=show_progress):
        x = to_inputs(corrupt(pixels, name, sev, seed), spec)
        out = {k: _logits(f, x, batch) for k, f in runs.items()}
        for k, lg in out.items():
            rows.append({"corruption": name, "family": CORRUPTIONS[name][0], "severity": int(sev), "model": k,
                         "top1": top1(lg, y), "agreement": agreement(out[ref], lg)})
    summary: Dict[str, Dict] = {}
    for k in runs:
        per = {}
        for name in names:
            mine = [r for r in rows if r["model"] == k and r["corruption"] == name]
            theirs = [r for r in rows if r["model"] == ref and r["corruption"] == name]
            acc = float(np.mean([r["top1"] for r in mine]))
            ref_acc = float(np.mean([r["top1"] for r in theirs]))
            per[name] = {"top1": acc, "agreement": float(np.mean([r["agreement"] for r in mine])),
                         "extra_drop": ((ref_acc - acc) - (clean_top1[ref] - clean_top1[k])) * 100}
        worst = max(per, key=lambda n: per[n]["extra_drop"]) if per else None
        summary[k] = {"clean_top1": clean_top1[k], "corruptions": per, "worst": worst,
                      "worst_extra_drop": per[worst]["extra_drop"] if worst else 0.0,
                      "mean_corrupted_top1": float(np.mean([v["top1"] for v in per.values()])) if per else None,
                      "mean_agreement": float(np.mean([v["agreement"] for v in per.values()])) if per else None}
    return {"images": int(len(y)), "reference": ref, "corruptions": list(names), "severities": list(map(int, severities)),
            "seed": seed, "rows": rows, "summary": summary}


def table_rows(report: Dict) -> List[Dict]:
    """One row per corruption: fp32 top-1, then each other model's top-1, agreement and extra drop."""
    ref = report["reference"]
    out = []
    for name in report["corruptions"]:
        row = {"corruption": name, "family": CORRUPTIONS[name][0],
               f"{ref} top1": report["summary"][ref]["corruptions"][name]["top1"]}
        for k, s in report["summary"].items():
            if k == ref:
                continue
            c = s["corruptions"][name]
            row.update({f"{k} top1": c["top1"], f"{k} agree": c["agreement"], f"{k} extra drop": c["extra_drop"]})
        out.append(row)
    return out


def markdown(report: Dict) -> List[str]:
    ref = report["reference"]
    others = [k for k in report["summary"] if k != ref]
    lines = [f"{report['images']} evaluation images, each corruption at severities "
             f"{', '.join(map(str, report['severities']))} (seed {report['seed']}); top-1 and agreement with {ref} "
             "are means over severities; extra drop: points lost to fp32 beyond the clean-image drop.", "",
             "| corruption | family | " + f"{ref} top-1 | " + " | ".join(f"{k} top-1 / agreement / extra drop" for k in others)
             + " |", "|---|---|---|" + "---|" * len(others)]
    lines.append(f"| (clean) | | {report['summary'][ref]['clean_top1']:.3f} | "
                 + " | ".join(f"{report['summary'][k]['clean_top1']:.3f} / - / -" for k in others) + " |")
    for r in table_rows(report):
        cells = [f"{r[f'{k} top1']:.3f} / {r[f'{k} agree']:.1%} / {round(r[f'{k} extra drop'], 2) + 0.0:+.2f}" for k in others]
        lines.append(f"| {r['corruption']} | {r['family']} | {r[f'{ref} top1']:.3f} | " + " | ".join(cells) + " |")
    lines.append("")
    for k in others:
        s = report["summary"][k]
        lines.append(f"- {k}: worst corruption {s['worst']} ({s['worst_extra_drop']:+.2f} points beyond its clean drop), "
                     f"mean agreement with {ref} under corruption {s['mean_agreement']:.1%}")
    return lines


def plot(report: Dict, path: Path) -> Optional[Path]:
    """Top-1 per corruption and severity for every model, and agreement with fp32 (None without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgecv.utils.io import atomic_path

    names = report["corruptions"]
    cols = min(4, len(names))
    nrows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        for k in report["summary"]:
            pts = sorted((r["severity"], r["top1"], r["agreement"]) for r in report["rows"]
                         if r["model"] == k and r["corruption"] == name)
            sev = [0] + [p[0] for p in pts]
            ax.plot(sev, [report["summary"][k]["clean_top1"] * 100] + [p[1] * 100 for p in pts], marker="o", ms=3,
                    label=k)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(0, 6))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes[0][0].set_ylabel("top-1 %", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("top-1 by severity (0 = clean)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def _labelled_pixels(bundle, data: str, o):
    """``(uint8 crops [N, C, H, W], labels in the bundle's order, skipped, left out as seen)`` for ``o.limit`` images
    spread over ``data``, less the images the bundle was made with (edgecv.evaluate.bundle.unseen_images)."""
    from edgecv.bundle.golden import to_pixels
    from edgecv.data.classes import apply_mapping
    from edgecv.evaluate.bundle import check_unseen_left, match_bundle_classes, unseen_images
    from edgecv.runtime.preprocess import Preprocessor

    pre = Preprocessor(bundle.preprocess)
    images = unseen_images(bundle, data, pre.channels, o)
    mapping = match_bundle_classes(images, bundle.labels, data, bundle.root, o)
    xs, ys, skipped = [], [], 0
    for frame, label, _ in progress(images, total=images.n, desc="load", show=o.show_progress):
        if frame is None:
            skipped += 1
            continue
        xs.append(pre(frame))
        ys.append(label)
    check_unseen_left(images, data, len(xs), skipped)
    left_out = images.left_out if images.seen else None
    return to_pixels(np.stack(xs), bundle.preprocess), apply_mapping(np.asarray(ys), mapping), skipped, left_out


def eval_corruptions(bundle_dir, data: str, names: Sequence[str], severities: Sequence[int],
                     options=None, out_dir: Optional[str] = None, seed: int = 0, **fields) -> Dict:
    """``edgecv eval BUNDLE --corruptions``: the bundle's fp32 model (the reference) and every int8 artefact a
    target can run here, on ``limit`` images spread over ``data`` (default 100), under each corruption and
    severity. ``options``: an :class:`edgecv.evaluate.bundle.EvalOptions` (backend, limit, allow_subset,
    show_progress), or its fields by name."""
    import dataclasses

    from edgecv import targets
    from edgecv.bundle.reader import open_bundle
    from edgecv.errors import DatasetError
    from edgecv.evaluate.bundle import EvalOptions
    from edgecv.runtime.backends.select import open_backend

    o = dataclasses.replace(options or EvalOptions(limit=100), **fields)
    backend, show_progress = o.backend, o.show_progress
    bundle = open_bundle(bundle_dir)
    pixels, y, skipped, left_out = _labelled_pixels(bundle, data, o)
    chosen = targets.auto_order() if backend == "auto" else [targets.get(backend)]
    opened: Dict[str, object] = {}
    try:
        for t in chosen:
            if not t.backend_class().available()[0]:
                continue
            for prec in t.backend_class().precisions(bundle):
                if prec == "fp32" and "fp32" in opened:
                    continue  # one fp32 reference
                be, _ = open_backend(bundle, t.name, prec)
                opened["fp32" if prec == "fp32" else f"{t.name} {prec}"] = be
        if "fp32" not in opened:
            raise DatasetError(f"{bundle.root}: no fp32 artefact runs here: nothing to compare with")
        rep = corruption_report({k: be.infer for k, be in opened.items()}, "fp32", pixels, y, bundle.preprocess,
                                names, severities, seed=seed, show_progress=show_progress)
    finally:
        for be in opened.values():
            be.close()
    rep["skipped"], rep["left_out_seen"] = skipped, left_out
    if out_dir:
        from edgecv.utils.io import atomic_write_json, atomic_write_text

        out = output_folder(out_dir)
        atomic_write_json(out / CORRUPTIONS_JSON, rep)
        atomic_write_text(out / CORRUPTIONS_MD, "\n".join(["# Robustness under corruption", ""] + markdown(rep)) + "\n")
        if plot(rep, out / CORRUPTIONS_PNG):
            rep["plot"] = str(out / CORRUPTIONS_PNG)
    return rep
