"""``edgecv export`` and ``edgecv check`` (workstation side)."""
from __future__ import annotations

import json
import sys

import click

from edgecv.cli.types import CommaList, FiniteRange, options_from
from edgecv.recipe import CALIB_CHOICES, PRUNE_METHODS, QAT_METHODS, WEIGHT_ROUNDINGS


@click.command()
@click.argument("source")
@click.option("-o", "--out", "out_dir", required=True,
              help="Bundle directory to write: new, empty, or an edgecv bundle (replaced atomically at the end). "
                   "A directory holding other files is refused.")
@click.option("--force", is_flag=True, help="Also replace a damaged bundle (never a directory holding other files).")
@click.option("--int8/--no-int8", default=None, help="Calibrate and write int8 artefacts.")
@click.option("--fp16", is_flag=True, default=None, help="Also allow fp16 in the on-device TensorRT build.")
@click.option("--prune", type=float, default=None,
              help="Fraction of the prunable channels to remove (0.5 = about half; which ones: --prune-method).")
@click.option("--prune-method", type=click.Choice(PRUNE_METHODS), default=None,
              help="reconstruct: the hidden channels of inverted-residual blocks, each block refitted on calibration "
                   "images; magnitude: every layer group by L2 norm (Torch-Pruning); auto (default): reconstruct "
                   "where the model has such blocks.")
@click.option("--drop-blocks", type=int, default=None,
              help="Remove this many residual blocks whole (MobileNetV2, EfficientNet-Lite): those whose removal moves "
                   "the output on the calibration images least per MAC saved; recover with --distill.")
@click.option("--input-size", type=int, default=None,
              help="Ship the model at this input size (square; the evaluation resize scales with it), distilled from "
                   "the source at its own size with --distill: fewer pixels, faster on every runtime.")
@click.option("--distill/--no-distill", default=None,
              help="Recover accuracy by distillation from the source model (after --prune, --drop-blocks or "
                   "--input-size).")
@click.option("--calib", default=None, help="Calibration images: a folder, or a calibration set file (calibration/*.yaml); "
              "default: the recipe's training data.")
@click.option("--calib-samples", type=int, default=None)
@click.option("--calib-method", type=click.Choice(CALIB_CHOICES), default=None,
              help="Calibration method; auto: each one, the best on the tune split per target.")
@click.option("--bias-correction/--no-bias-correction", default=None,
              help="Correct each int8 layer's bias for its weights' rounding (default on; nearest rounding only).")
@click.option("--weight-rounding", type=click.Choice(WEIGHT_ROUNDINGS), default=None,
              help="int8 weights: gptq (each layer's rounding chosen on the calibration images so its output moves "
                   "least) or nearest (default, with bias correction).")
@click.option("--max-drop", type=float, default=None, help="Largest top-1 drop allowed, in points (default 1.0).")
@click.option("--target", "targets", type=CommaList(), default=None,
              help="Comma list of deploy targets (default: all registered).")
@click.option("--eval", "eval", default=None, help="Evaluation images; default: the recipe's held-out split.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=None,
              help="Largest batch the device engine is built for (default 8; DLA engines are static at 1).")
@click.option("--release", type=click.IntRange(min=0), default=None,
              help="Release number; a device refuses one lower or equal to what it runs (default 0).")
@click.option("--arch", type=CommaList(), default=None,
              help="Comma list of device CPU architectures (e.g. aarch64); default: any.")
@click.option("--golden", type=click.IntRange(1, 4096), default=None,
              help="Golden vectors shipped for `edgecv verify` on the device (default 64).")
@click.option("--min-agreement", type=FiniteRange(0, 1), default=None,
              help="Fidelity budget recorded for verify: top-1 agreement with fp32 (default 0.99).")
@click.option("--qat-epochs", type=click.IntRange(0, 100), default=None,
              help="The QAT rung, when PTQ and fallback miss the budget: 0 turns it off; else its distillation "
                   "epochs (default 3).")
@click.option("--qat-method", type=click.Choice(QAT_METHODS), default=None,
              help="How the QAT rung fits: blocks (block-wise reconstruction on the calibration images), distill "
                   "(end to end), auto (default: blocks where the network cuts into blocks).")
@click.option("--qat-block-steps", type=click.IntRange(1, 100000), default=None,
              help="Block-wise reconstruction: Adam steps of 32 images per block (default 60).")
@click.option("--corruptions", default=None,
              help="Robustness report: all (default), none, families (noise,blur,weather,digital) or corruption names.")
@click.option("--corruption-images", type=click.IntRange(1), default=None,
              help="Evaluation images the robustness report corrupts (default 100).")
@click.option("--max-corruption-drop", type=FiniteRange(0), default=None,
              help="Budget: the worst corruption's extra top-1 drop of an int8 artefact beyond its clean drop, points "
                   "(default: reported, not gated).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Recipe override.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON at the end.")
def export(source, out_dir, force, overrides, as_json, **flags):
    """Turn SOURCE (a recipe or a checkpoint) into a verified deploy bundle in OUT."""
    from edgecv.bundle.manifest import BUNDLE
    from edgecv.export.options import export_options
    from edgecv.recipe import ExportConfig
    from edgecv.utils.outputs import check_output

    flags = options_from(ExportConfig, flags)  # the flags given, by field name; the recipe's values for the rest
    check_output(out_dir, BUNDLE, force)  # these two are torch-free: a typo is refused before seconds of imports
    export_options(source, flags, list(overrides))
    from edgecv.export.pipeline import export_bundle

    manifest = export_bundle(source, out_dir, flags, list(overrides), show_progress=not as_json, force=force)
    if as_json:
        click.echo(json.dumps(manifest))
        return
    from edgecv.utils.table import print_rows

    s = manifest["summary"]
    from edgecv import targets

    size = s.get("input_size")
    source = f"(source fp32 at {size['source']} px)" if size else "(unpruned fp32 baseline)"
    ref = s["baseline"].get("int8_latency_ms") or {}  # a smaller model's export: the unpruned source in int8
    rows = [{"artefact": source, "target": targets.host_reference().name, "precision": "fp32",
             "top1": s["baseline"]["top1"], "latency_ms": s["baseline"]["latency_ms"], "speedup": 1.0, "fallback": 0,
             "agreement": None}]
    rows += [{"artefact": "(unpruned int8)", "target": t, "precision": "int8", "latency_ms": ms,
              "speedup": s["baseline"]["latency_ms"] / ms, "vs_unpruned_int8": 1.0} for t, ms in ref.items()]
    for a in manifest["artifacts"]:
        rows.append({"artefact": a["file"], "target": a["target"], "precision": a["precision"], "top1": a["top1"],
                     "latency_ms": a["latency_ms"], "speedup": s["baseline"]["latency_ms"] / a["latency_ms"],
                     "fallback": len(a["fallback_layers"]), "agreement": a.get("agreement"), "rung": a.get("rung"),
                     "worst_class_drop": a.get("worst_class_drop"), "vs_unpruned_int8": a.get("speedup_vs_unpruned_int8")})
    print_rows(rows, ["artefact", "target", "precision", "top1", "agreement", "worst_class_drop", "latency_ms",
                      "speedup", "fallback", "rung"] + (["vs_unpruned_int8"] if ref else []),
               f"edgecv export -> {out_dir}")
    for t, d in manifest["default"].items():
        click.echo(f"default for {t}: {d['file']}  ({d['reason']})")
    if manifest.get("cpu_default"):
        c = manifest["cpu_default"]
        click.echo(f"default on a CPU: {c['target']} {c['file']}  ({c['reason']})")
    for t, why in (s.get("targets_skipped") or {}).items():
        click.echo(f"no {t} artefact: {why}")
    eng = s["engine"]
    if not eng.get("built"):
        click.echo(f"TensorRT engine: not built here ({eng['reason']}); {eng['how']}")


@click.command()
@click.argument("bundle")
def check(bundle):
    """Verify BUNDLE's checksums and its TensorRT-target ONNX against TensorRT's Q/DQ rules.

    Exit status: 0 it passes; 1 it fails or is no bundle (each reason printed).
    """
    from edgecv.export.check import check_bundle

    res = check_bundle(bundle)
    for n in res.notes:
        click.echo(f"ok: {n}")
    for e in res.errors:
        click.echo(f"error: {e}", err=True)
    sys.exit(0 if res.ok else 1)
