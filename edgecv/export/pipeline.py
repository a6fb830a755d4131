"""``edgecv export``: SOURCE -> prune -> distill -> ONNX -> int8 -> gates -> deploy bundle.

Everything is written into a temporary directory beside ``out_dir`` and renamed into place at the end,
so an interrupted or failed export leaves no bundle.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from edgecv import targets
from edgecv.bundle.manifest import BUNDLE
from edgecv.errors import ExportError, RecipeError
from edgecv.metrics import Budget, agreement, top1
from edgecv.recipe import CALIB_CHOICES, CALIB_METHODS, ExportConfig, Recipe, check_ranges
from edgecv.utils.outputs import OutputLock, check_output, scratch_dir, staged_output

log = logging.getLogger("edgecv.export")


def resolve_options(recipe: Optional[Recipe], flags: Dict) -> ExportConfig:
    """The recipe's ``export:`` section, with every flag the user passed on top."""
    from edgecv.export.calibration_set import is_definition, load_calibration_set

    cfg = copy.deepcopy(recipe.export) if recipe else ExportConfig()
    for k, v in flags.items():
        if v is not None:
            setattr(cfg, k, v)
    if is_definition(cfg.calib):
        # A calibration set file overrides the recipe's calib_* fields; explicit flags still win.
        cs = load_calibration_set(cfg.calib)
        cfg.calib_set, cfg.calib, cfg.calib_seed = cfg.calib, cs.images, cs.seed
        if flags.get("calib_samples") is None:
            cfg.calib_samples = cs.samples
        if flags.get("calib_method") is None:
            cfg.calib_method = cs.method
    check_ranges(cfg, flag_style=True)
    if cfg.distill and cfg.prune == 0:
        raise RecipeError("--distill: needs --prune (distillation recovers accuracy lost to pruning; without "
                          "pruning there is nothing to recover): add --prune R, or --no-distill")
    if not cfg.targets:
        raise RecipeError(f"--target: no target given (expected some of: {', '.join(targets.names())})")
    for t in cfg.targets:
        if t not in targets.names():
            raise RecipeError(f"--target: unknown target {t!r} (expected one of: {', '.join(targets.names())})")
        ok, why = targets.export_check(targets.get(t))
        if not ok:
            raise RecipeError(f"--target {t}: {why}; the export judges a CPU target's artefact with its own runtime")
    from edgecv.data.corruptions import parse_names, severities

    try:
        if cfg.corruptions != "none":
            parse_names(cfg.corruptions)
        severities(cfg.corruption_severities)
    except ValueError as e:
        raise RecipeError(f"--corruptions: {e}") from None
    if cfg.calib_method not in CALIB_CHOICES:
        raise RecipeError(f"--calib-method: unknown method {cfg.calib_method!r}")
    return cfg


class Stages:
    """Prints one line per stage with its wall time (the progress a user sees between tqdm bars)."""

    def __init__(self, quiet: bool = False):
        self.quiet, self.times = quiet, {}

    def __call__(self, name: str):
        stages = self

        class _S:
            def __enter__(self):
                self.t0 = time.time()
                if not stages.quiet:
                    print(f"[edgecv export] {name} ...", flush=True)

            def __exit__(self, *exc):
                stages.times[name] = round(time.time() - self.t0, 2)
                if not stages.quiet and exc[0] is None:
                    print(f"[edgecv export] {name} done in {stages.times[name]:.1f}s", flush=True)

        return _S()


def _torch_eval(model, x: np.ndarray, y: np.ndarray) -> Dict:
    from edgecv.metrics import topk_accuracy

    model.eval()
    with torch.no_grad():
        logits = np.concatenate([model(torch.from_numpy(x[i: i + 256])).numpy() for i in range(0, len(x), 256)])
    return topk_accuracy(logits, y)


def export_bundle(source: str, out_dir: str, flags: Dict, overrides: List[str] = (),
                  show_progress: bool = True, force: bool = False) -> Dict:
    """Run the whole export; return the manifest. Raises ExportError (and writes nothing) when a gate fails.

    ``out_dir`` must be new, empty, or an edgecv bundle (``force``: also a damaged one); see
    edgecv.utils.outputs. It is replaced atomically at the end, so an export that fails or is killed
    leaves the previous bundle as it was.
    """
    out = check_output(out_dir, BUNDLE, force)  # fail before minutes of work, not after
    with OutputLock(out):  # one export per output: a second is refused at once, not after its work
        manifest, opts = _export_locked(source, out, flags, overrides, show_progress, force)
    if manifest["summary"]["engine"].get("buildable_here"):
        with Stages(quiet=not show_progress)("TensorRT engine"):
            manifest["summary"]["engine"] = _build_engine(out, opts)
    return manifest


def _export_locked(source: str, out: Path, flags: Dict, overrides: List[str], show_progress: bool,
                   force: bool) -> Tuple[Dict, ExportConfig]:
    from edgecv.data.transforms import preprocess_spec
    from edgecv.export.bundle_writer import write_bundle
    from edgecv.export.data import calib_and_eval_sets
    from edgecv.export.gates import accuracy_gate, eval_onnx, speed_gate
    from edgecv.export.onnx_export import compare_with_torch, export_onnx
    from edgecv.export.quantize import calibrate
    from edgecv.models.checkpoint import make_checkpoint, save_checkpoint
    from edgecv.train.sources import is_recipe, load_source

    recipe = None
    if is_recipe(source):
        from edgecv.recipe import load_recipe

        recipe = load_recipe(source, overrides)
    opts = resolve_options(recipe, flags)
    stages = Stages(quiet=not show_progress)
    summary: Dict = {"source": source, "options": dataclasses.asdict(opts)}

    with stages("load source"):
        src = load_source(source, overrides, allow_train=True, show_progress=show_progress)
    data_cfg = src.data
    shape = (data_cfg.channels, data_cfg.input_size, data_cfg.input_size)
    if recipe is None and not opts.calib:
        raise RecipeError("--calib: required when SOURCE is a checkpoint (a folder of calibration images)")
    if recipe is None and not opts.eval:
        raise RecipeError("--eval: required when SOURCE is a checkpoint (a labelled image folder)")
    with stages("calibration and evaluation images"):
        cal, ev = calib_and_eval_sets(data_cfg, opts.calib, opts.eval, opts.calib_samples, opts.eval_limit,
                                      seed=opts.calib_seed, show_progress=show_progress)
    from edgecv.data.classes import apply_mapping, match_classes

    ev.y = apply_mapping(ev.y, match_classes(ev.classes, src.classes, ev.source, source))
    from edgecv.export.data import split_off

    tune, ev = split_off(ev, opts.tune_fraction, opts.calib_seed)
    summary["calibration"] = {"source": cal.source, "samples": len(cal), "method": opts.calib_method,
                              "definition": opts.calib_set}
    overlap = len(set(ev.ids) & set(cal.ids))
    summary["calibration"].update(cal.record())
    summary["evaluation"] = {**ev.record(), "disjoint_from_calibration": overlap == 0,
                             "disjoint_from_tune": not set(ev.ids) & set(tune.ids),
                             "left_out_as_calibration_images": ev.excluded_overlap}
    summary["tune"] = {**tune.record(), "used_for": "per-layer fallback (top-1 drop and agreement budget)"}
    if overlap:
        raise ExportError(f"{overlap} evaluation images are also calibration images")  # never reported as held out

    with staged_output(out, BUNDLE, force, lock=False) as tmp:
        work = scratch_dir(tmp)
        teacher = src.model.eval()
        base_onnx = work / "baseline_fp32.onnx"
        with stages("baseline fp32 ONNX"):
            export_onnx(teacher, base_onnx, shape, opts.opset)
            base_acc = eval_onnx(base_onnx, ev.x, ev.y)
        summary["baseline"] = {"top1": base_acc["top1"], "top5": base_acc["top5"], "pruned": False}
        student, stage_acc = teacher, [{"stage": "fp32 (source)", **base_acc}]
        pruned_info = None
        if opts.prune > 0:
            from edgecv.compress.prune import prune_channels

            with stages(f"prune {opts.prune:.0%} of channels"):
                student, report = prune_channels(copy.deepcopy(teacher), shape, opts.prune, opts.prune_round_to,
                                                 torch.from_numpy(cal.x[:2]))
                acc = _torch_eval(student, ev.x, ev.y)
            pruned_info = report.as_dict()
            pruned_info["top1_after_prune"] = acc["top1"]
            stage_acc.append({"stage": "pruned", **acc})
            if opts.distill:
                if recipe is None:
                    raise RecipeError("--distill: needs a recipe SOURCE (its training data)")
                from edgecv.compress.distill import distill
                from edgecv.data.loaders import load_data

                with stages(f"distill {opts.distill_epochs} epoch(s)"):
                    _, _, train_loader, val_loader, _ = load_data(recipe.data)
                    distill(student, teacher, train_loader, val_loader, opts.distill_epochs, opts.distill_lr,
                            opts.temperature, opts.alpha, show_progress=show_progress)
                    acc = _torch_eval(student, ev.x, ev.y)
                pruned_info["top1_after_distill"] = acc["top1"]
                stage_acc.append({"stage": "pruned + distilled", **acc})
            ck = make_checkpoint(student, src.arch, src.arch_args, src.classes, preprocess_spec(data_cfg),
                                 pruned=True)
            save_checkpoint(ck, tmp / "pruned_model.pt")
        summary["prune"] = pruned_info
        fp32_path = tmp / "model_fp32.onnx"
        with stages("ONNX export"):
            export_onnx(student, fp32_path, shape, opts.opset)
            parity = compare_with_torch(student, str(fp32_path), torch.from_numpy(ev.x[:32]))
            fp32_acc = eval_onnx(fp32_path, ev.x, ev.y) if student is not teacher else base_acc
        summary["onnx_parity"] = parity
        from edgecv.export.gates import onnx_logits
        from edgecv.metrics import fidelity, topk_accuracy

        ref_eval = onnx_logits(fp32_path, ev.x)  # the shipped fp32 model: what int8 must agree with
        ref_tune = onnx_logits(fp32_path, tune.x)
        base_tune_top1 = eval_onnx(base_onnx, tune.x, tune.y)["top1"]
        artifacts = [{"file": "model_fp32.onnx", "target": t, "precision": "fp32", **fp32_acc,
                      **fidelity(ref_eval, ref_eval, ev.y), "fallback_layers": [], "calibration": None}
                     for t in opts.targets]
        gate_failures = []
        if opts.int8:
            methods = CALIB_METHODS if opts.calib_method == "auto" else (opts.calib_method,)
            calibs = {}
            for m in methods:
                with stages(f"int8 calibration ({m}, {len(cal)} images)"):
                    calibs[m] = calibrate(fp32_path, cal.x, m, bias_correction=opts.bias_correction)
            sens_x = cal.x[: min(64, len(cal))]
            qat: Dict = {}  # the QAT rung runs at most once, for the first target that needs it
            for target in opts.targets:
                tgt = targets.get(target)
                name = tgt.int8_file()
                trials = None
                if len(calibs) > 1:
                    with stages(f"int8 {target}: calibration method on the {len(tune)} tune images"):
                        method, trials = choose_calibration(str(fp32_path), calibs, tgt, tmp / name, tune, ref_tune, work)
                else:
                    method = next(iter(calibs))
                calib = calibs[method]
                with stages(f"int8 {target}: quantize and accuracy gate"):
                    g = accuracy_gate(str(fp32_path), calib, tgt, tmp / name, tune.x, tune.y, base_tune_top1,
                                      opts.max_drop, sens_x, work, show_progress=show_progress,
                                      min_agreement=opts.min_agreement, ref_logits=ref_tune)
                used_calib, rung = calib, ("ptq + fallback" if g.fallback else "ptq")
                # QAT when PTQ missed even with layers in float, and when it passed only by keeping layers in float
                # (they can cost int8 speed): a QAT artefact that passes with fewer float layers is taken when PTQ
                # missed, and otherwise when it is faster (measured here for a CPU target; for TensorRT, fewer
                # float layers keep more int8 fusions). Its own fallback search stops short of what PTQ needed.
                if (not g.passed or g.fallback) and opts.qat_epochs > 0:
                    from edgecv.export.qat_rung import qat_is_faster, run_qat, take_qat

                    ptq_file = work / f"ptq_{name}"
                    shutil.copyfile(tmp / name, ptq_file)
                    if not qat:
                        with stages(f"QAT rung: {opts.qat_epochs} epoch(s) of quantization-aware distillation "
                                    f"from fp32 on {len(cal)} unlabelled calibration images"):
                            qat.update(run_qat(student, cal, tune, ref_tune, opts, work, shape, show_progress, method))
                    with stages(f"int8 {target}: quantize the QAT weights and accuracy gate"):
                        g2 = accuracy_gate(str(qat["onnx"]), qat["calib"], tgt, tmp / name, tune.x, tune.y,
                                           base_tune_top1, opts.max_drop, sens_x, work, show_progress=show_progress,
                                           min_agreement=opts.min_agreement, ref_logits=ref_tune,
                                           max_fallback=len(g.fallback) - 1 if g.passed else None)
                    log.info("%s int8: PTQ %s with %d layer(s) in float; QAT %s with %d", target,
                             "passed" if g.passed else "missed", len(g.fallback),
                             "passed" if g2.passed else "missed", len(g2.fallback))
                    if take_qat(g, g2, tgt, functools.partial(qat_is_faster, ptq_file, tmp / name, tgt, tune.x)):
                        g, used_calib, rung = g2, qat["calib"], "qat" + (" + fallback" if g2.fallback else "")
                    else:
                        if not g.passed:
                            g.reason += f"; after QAT: {g2.reason}"
                        shutil.copyfile(ptq_file, tmp / name)  # the QAT gate wrote over PTQ's file
                if not g.passed:
                    gate_failures.append(g.reason)
                name = _share_identical(tmp, name, artifacts)
                logits = onnx_logits(tmp / name, ev.x, target=tgt)  # reported numbers: the evaluation split only
                held = {**topk_accuracy(logits, ev.y), **fidelity(ref_eval, logits, ev.y)}
                held["within_budget"] = Budget(opts.max_drop, opts.min_agreement).within(
                    base_acc["top1"], held["top1"], held["agreement"])
                if g.passed and not held["within_budget"]:  # the final check is on images nothing was tuned on
                    gate_failures.append(
                        f"{target} int8 on the {len(ev)} evaluation images: top-1 {held['top1']:.4f} vs fp32 source "
                        f"{base_acc['top1']:.4f} ({(base_acc['top1'] - held['top1']) * 100:.2f} points, budget "
                        f"{opts.max_drop}), agreement with fp32 {held['agreement']:.1%} (floor {opts.min_agreement:.1%})"
                        f": the budget held on the {len(tune)} tune images only")
                artifacts.append({"file": name, "target": target, "precision": "int8", **held,
                                  "fallback_layers": g.fallback, "rung": rung,
                                  "qat": qat["info"] if rung.startswith("qat") else None,
                                  "calibration": {"method": method, "samples": len(cal), "chosen_from": trials,
                                                  "bias_correction": bool(used_calib.input_means)}})
                if tgt.post_quantize:
                    import onnx

                    qdq = onnx.load(str(tmp / name))
                    for step in tgt.post_quantize:
                        targets.load(step)(qdq, tmp, name, used_calib)
        fp32_drop = (base_acc["top1"] - fp32_acc["top1"]) * 100
        if fp32_drop > opts.max_drop:
            gate_failures.append(f"the pruned fp32 model is already {fp32_drop:.2f} points below the source "
                                 f"(top-1 {fp32_acc['top1']:.4f} vs {base_acc['top1']:.4f}); prune less or "
                                 f"distill longer (budget --max-drop {opts.max_drop})")
        refuse_if(gate_failures)  # before the robustness report (199 s of a 10-minute Lite0 export) it would discard
        if opts.corruptions != "none":
            with stages(f"robustness under corruption ({opts.corruptions}, {min(len(ev), opts.corruption_images)} images)"):
                summary["robustness"] = robustness(tmp, base_onnx if opts.prune > 0 else None, artifacts, ev,
                                                   preprocess_spec(data_cfg), opts, show_progress)
            refuse_if(corruption_failures(summary["robustness"], opts))
        with stages("speed gate (this CPU, batch 1, 2 threads, each artefact on its target's runtime)"):
            # a device-built target's number here is its ONNX under ONNX Runtime on this CPU, reported but never
            # used to choose its default
            models = {"baseline_fp32": (base_onnx, None)}
            models.update({_label(a): (tmp / a["file"], targets.get(a["target"])) for a in artifacts})
            lat = speed_gate(models, ev.x)
        summary["baseline"]["latency_ms"] = lat["baseline_fp32"]["p50_ms"]
        for a in artifacts:
            a["latency_ms"] = lat[_label(a)]["p50_ms"]
            a["latency"] = lat[_label(a)]
        default = choose_defaults(artifacts, base_acc["top1"], opts.max_drop)
        summary["default"] = default
        summary["cpu_default"] = choose_cpu_default(artifacts, default)
        unavailable = targets.exportable()[1]
        summary["targets_skipped"] = {t: unavailable.get(t, "not requested") for t in targets.names()
                                      if t not in opts.targets}
        summary["stages"] = stage_acc
        summary["engine"] = _engine_plan(opts)
        summary["golden"] = write_golden_vectors(tmp, fp32_path, ev, preprocess_spec(data_cfg), opts)
        manifest = write_bundle(tmp, src, data_cfg, recipe, opts, artifacts, summary, stages.times)
    return manifest, opts


def refuse_if(failures: List[str]) -> None:
    """The export's refusal: every budget missed, and no bundle written."""
    if failures:
        raise ExportError("accuracy gate failed, no bundle written: " + " | ".join(failures))


def write_golden_vectors(tmp: Path, fp32_path: Path, ev, spec: Dict, opts: ExportConfig) -> Dict:
    """The first ``opts.golden`` evaluation images, their labels and the fp32 ONNX's logits (edgecv verify)."""
    from edgecv.bundle.golden import to_inputs, to_pixels, write_golden
    from edgecv.bundle.names import GOLDEN
    from edgecv.export.gates import onnx_logits

    n = min(opts.golden, len(ev))
    pixels = to_pixels(ev.x[:n], spec)
    logits = onnx_logits(fp32_path, to_inputs(pixels, spec))
    write_golden(tmp / GOLDEN, pixels, ev.y[:n], logits)
    return {"file": GOLDEN, "n": n, "reference": fp32_path.name,
            "budget": {"min_agreement": opts.min_agreement, "max_drop": opts.max_drop}}


def robustness(tmp: Path, unpruned: Optional[Path], artifacts: List[Dict], ev, spec: Dict, opts: ExportConfig,
               show_progress: bool) -> Dict:
    """The corruption report of the shipped fp32 model (the reference), each int8 artefact on the runtime that
    judges it here, and the unpruned source when pruned; writes corruptions.png into the bundle."""
    from edgecv.bundle.golden import to_pixels
    from edgecv.data.corruptions import parse_names, severities
    from edgecv.export.gates import host_backend
    from edgecv.runtime.robustness import corruption_report, plot

    n = min(len(ev), opts.corruption_images)
    backends = {"fp32": host_backend(tmp / "model_fp32.onnx")}
    if unpruned is not None:
        backends["unpruned fp32"] = host_backend(unpruned)
    for a in artifacts:
        if a["precision"] == "int8":
            t = targets.get(a["target"])
            backends[f"{t.name} int8" + ("" if t.host_latency else " (on ONNX Runtime)")] = host_backend(tmp / a["file"], t)
    try:
        rep = corruption_report({k: be.infer for k, be in backends.items()}, "fp32", to_pixels(ev.x[:n], spec),
                                ev.y[:n], spec, parse_names(opts.corruptions), severities(opts.corruption_severities),
                                seed=opts.calib_seed, show_progress=show_progress)
    finally:
        for be in backends.values():
            be.close()
    if plot(rep, tmp / "corruptions.png"):
        rep["plot"] = "corruptions.png"
    return rep


def corruption_failures(rep: Dict, opts: ExportConfig) -> List[str]:
    if opts.max_corruption_drop is None:
        return []
    out = []
    for k, s in rep["summary"].items():
        if k.endswith("int8") or "int8 " in k:
            if s["worst_extra_drop"] > opts.max_corruption_drop:
                out.append(f"{k} under {s['worst']}: {s['worst_extra_drop']:.2f} points below fp32 beyond its clean "
                           f"drop (budget --max-corruption-drop {opts.max_corruption_drop}, {rep['images']} images)")
    return out


def choose_calibration(fp32_path: str, calibs: Dict, tgt, out: Path, tune, ref_tune, work: Path) -> Tuple[str, Dict]:
    """The calibration method whose int8 model (no fallback) agrees best with fp32 on the tune split, then the
    best tune top-1, then the first in CALIB_METHODS order; and what each one reached."""
    from edgecv.export.gates import onnx_logits
    from edgecv.export.quantize import quantize

    trials = {}
    for m, c in calibs.items():
        quantize(fp32_path, c, out, tgt)
        logits = onnx_logits(out, tune.x, target=tgt)
        trials[m] = {"tune_agreement": agreement(ref_tune, logits), "tune_top1": top1(logits, tune.y)}
    best = max(calibs, key=lambda m: (trials[m]["tune_agreement"], trials[m]["tune_top1"], -CALIB_METHODS.index(m)))
    return best, trials


def _label(a: Dict) -> str:
    return f"{a['target']}:{a['file']}"


def _share_identical(tmp: Path, name: str, artifacts: List[Dict]) -> str:
    """An int8 file byte-identical to one already written for another target (the same quantizer settings
    and fallback) is not stored twice: the artefact names the existing file."""
    from edgecv.utils.io import sha256_file

    digest = sha256_file(tmp / name)
    for a in artifacts:
        if a["precision"] == "int8" and a["file"] != name and sha256_file(tmp / a["file"]) == digest:
            (tmp / name).unlink()
            return a["file"]
    return name


def choose_cpu_default(artifacts: List[Dict], default: Dict) -> Optional[Dict]:
    """Across the targets whose export-host latency is their device latency (the CPU runtimes), the fastest
    default: what ``--backend auto`` runs on a CPU host until ``edgecv verify`` measures the device itself."""
    cands = [(t, d) for t, d in default.items() if targets.get(t).host_latency]
    if not cands:
        return None
    lat = {(a["target"], a["file"]): a["latency_ms"] for a in artifacts}
    t, d = min(cands, key=lambda c: lat[(c[0], c[1]["file"])])
    others = ", ".join(f"{o} {d2['precision']} {lat[(o, d2['file'])]:.3f} ms" for o, d2 in cands if o != t)
    return {"target": t, "file": d["file"], "precision": d["precision"],
            "reason": f"{t} {d['precision']} {lat[(t, d['file'])]:.3f} ms" + (f" < {others}" if others else "")}


def choose_defaults(artifacts: List[Dict], ref_top1: float, max_drop: float) -> Dict:
    """Per target, the fastest artefact within the accuracy budget; int8 slower than fp32 is not the default."""
    default = {}
    for target in sorted({a["target"] for a in artifacts}):
        arts = [a for a in artifacts if a["target"] == target]
        fp32 = next(a for a in arts if a["precision"] == "fp32")
        int8 = next((a for a in arts if a["precision"] == "int8"), None)
        if not targets.get(target).host_latency:
            pick, why = (int8, f"explicit int8 Q/DQ ({target} latency is measured on the device: edgecv verify)") \
                if int8 else (fp32, "no int8 artefact")
        elif int8 is None:
            pick, why = fp32, "no int8 artefact"
        elif int8["latency_ms"] < fp32["latency_ms"]:
            pick, why = int8, (f"int8 {int8['latency_ms']:.3f} ms < fp32 {fp32['latency_ms']:.3f} ms, "
                               f"top-1 {int8['top1']:.4f} within {max_drop} points of {ref_top1:.4f}")
        else:
            pick, why = fp32, (f"int8 is slower on this CPU ({int8['latency_ms']:.3f} ms vs fp32 "
                               f"{fp32['latency_ms']:.3f} ms): fp32 stays the default")
        default[target] = {"file": pick["file"], "precision": pick["precision"], "reason": why}
    return default


def _engine_plan(opts: ExportConfig) -> Dict:
    """Whether the TensorRT engine can be built here; otherwise how to build it on the device."""
    from edgecv.runtime.trt_compat import trt_available

    ok, why = trt_available()
    hint = f"on the device: edgecv build BUNDLE{' --int8' if opts.int8 else ''}{' --fp16' if opts.fp16 else ''}"
    return {"built": False, "buildable_here": ok, "reason": why or "built after the bundle is written", "how": hint}


def _build_engine(out: Path, opts: ExportConfig) -> Dict:
    """Build into the engine cache (engines are device-specific, so never into the bundle)."""
    from edgecv.runtime.engine_build import build_engine_for_bundle

    try:
        return {"built": True, **build_engine_for_bundle(out, int8=opts.int8, fp16=opts.fp16,
                                                         max_batch=opts.max_batch)}
    except Exception as e:  # the bundle is complete without an engine; say why it is missing
        return {"built": False, "reason": f"engine build failed: {e}", "how": "edgecv build BUNDLE"}
