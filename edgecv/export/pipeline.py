"""``edgecv export``: SOURCE -> prune -> distill -> ONNX -> int8 ladder -> gates -> deploy bundle, as a list of
named stages that share one :class:`ExportRun`.

Everything is written into a staging directory beside ``out_dir`` and swapped into place at the end, so an
interrupted or refused export leaves no bundle (and the previous one as it was).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from edgecv import targets
from edgecv.bundle.manifest import BUNDLE
from edgecv.bundle.names import FP32_MODEL, PRUNED_MODEL
from edgecv.errors import RecipeError
from edgecv.export.decide import choose_cpu_default, choose_defaults, corruption_failures, refuse_if
from edgecv.export.evidence import robustness, write_golden_vectors
from edgecv.export.image_sets import image_sets, tune_sources, write_seen_images
from edgecv.export.options import export_options
from edgecv.metrics import Budget
from edgecv.recipe import CALIB_METHODS, ExportConfig
from edgecv.utils.outputs import OutputLock, check_output, scratch_dir, staged_output

log = logging.getLogger("edgecv.export")


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


@dataclass
class ExportRun:
    """What the stages of one export share: its options, the source model, the image sets, the staging folder,
    the models and references made so far, the artefacts, and every budget missed."""

    source: str
    opts: ExportConfig
    recipe: Any
    src: Any
    stages: Stages
    show_progress: bool
    summary: Dict = field(default_factory=dict)
    tmp: Path = None
    work: Path = None
    cal: Any = None  # calibration images (edgecv.export.data.ArraySet)
    qat_images: Any = None  # what the QAT rung trains on (unlabelled): the calibration images, or pooled ones
    agree: Any = None  # pooled images that join the tune split for agreement with fp32 (no labels)
    tune: Any = None  # edgecv.export.gates.TuneSplit
    ev: Any = None  # the evaluation split: every reported number, nothing chosen on it
    ev_src: Any = None  # the evaluation and tune splits at the source's input size (--input-size: the same images)
    tune_src: Any = None
    teacher: Any = None
    student: Any = None
    base_onnx: Path = None
    fp32_path: Path = None
    base_acc: Dict = None
    fp32_acc: Dict = None
    ref_eval: np.ndarray = None
    gate: Any = None
    calibs: Dict = field(default_factory=dict)
    qat: Dict = field(default_factory=dict)
    seen: Dict[str, List[str]] = field(default_factory=dict)  # identities of the images that chose, by use
    artifacts: List[Dict] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)
    stage_acc: List[Dict] = field(default_factory=list)

    @property
    def data(self):
        """The shipped model's data settings: the source's, at ``--input-size`` when given."""
        from edgecv.data.transforms import at_input_size

        return at_input_size(self.src.data, self.opts.input_size)

    @property
    def resized(self) -> bool:
        return self.data.input_size != self.src.data.input_size

    @property
    def pruned(self) -> bool:
        """Channels or whole blocks were removed (``--prune``, ``--drop-blocks``)."""
        return self.opts.prune > 0 or self.opts.drop_blocks > 0

    @property
    def shape(self) -> Tuple[int, int, int]:
        return self.data.channels, self.data.input_size, self.data.input_size

    @property
    def src_shape(self) -> Tuple[int, int, int]:
        d = self.src.data
        return d.channels, d.input_size, d.input_size

    @property
    def spec(self) -> Dict:
        from edgecv.data.transforms import preprocess_spec

        return preprocess_spec(self.data)


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
        run = load(source, flags, list(overrides), show_progress)
        with staged_output(out, BUNDLE, force, lock=False) as tmp:
            run.tmp, run.work = tmp, scratch_dir(tmp)
            manifest = _stages(run)
    if manifest["summary"]["engine"].get("buildable_here"):
        with Stages(quiet=not show_progress)("TensorRT engine"):
            manifest["summary"]["engine"] = _build_engine(out, run.opts)
    return manifest


def _stages(run: ExportRun) -> Dict:
    """The export, stage by stage; the manifest of the bundle written into ``run.tmp``."""
    baseline(run)
    compress(run)
    export_fp32(run)
    check_fp32_drop(run)
    refuse_if(run.failures)  # no int8 artefact can make up what pruning lost: refused before the ladder's minutes
    if run.opts.int8:
        quantize_int8(run)
    bf16(run)
    refuse_if(run.failures)  # before the robustness report (199 s of a 10-minute Lite0 export) it would discard
    robustness_report(run)
    speed_and_defaults(run)
    return write(run)


def load(source: str, flags: Dict, overrides: List[str], show_progress: bool) -> ExportRun:
    """The recipe and options, the source model, and the image sets (calibration, tune, evaluation)."""
    from edgecv.train.sources import load_source

    recipe, opts = export_options(source, flags, overrides)
    run = ExportRun(source, opts, recipe, None, Stages(quiet=not show_progress), show_progress)
    run.summary = {"source": source, "options": dataclasses.asdict(opts)}
    with run.stages("load source"):
        run.src = load_source(source, overrides, allow_train=True, show_progress=show_progress)
    if recipe is None and not opts.calib and not opts.calib_pools:  # after load_source: what SOURCE is comes first
        if opts.calib_set:  # a calibration set whose images would be the recipe's training split
            raise RecipeError(f"--calib {opts.calib_set}: names no images (images: a folder, or pools:), and a "
                              "checkpoint has no recipe training split to take them from")
        raise RecipeError("--calib: required when SOURCE is a checkpoint (a folder of calibration images)")
    if recipe is None and not opts.eval:
        raise RecipeError("--eval: required when SOURCE is a checkpoint (a labelled image folder)")
    if opts.drop_blocks:  # before the image sets are read: a count the model cannot give is known now
        from edgecv.compress.depth import blocks_to_drop

        try:
            blocks_to_drop(run.src.model, opts.drop_blocks)
        except ValueError as e:
            raise RecipeError(str(e)) from None
    image_sets(run)
    return run


def baseline(run: ExportRun) -> None:
    """The source model as fp32 ONNX, and its top-1 on the evaluation split (what every drop is measured from)."""
    from edgecv.export.gates import eval_onnx
    from edgecv.export.onnx_export import export_onnx

    run.teacher = run.student = run.src.model.eval()
    run.base_onnx = run.work / "baseline_fp32.onnx"
    with run.stages("baseline fp32 ONNX"):
        export_onnx(run.teacher, run.base_onnx, run.src_shape, run.opts.opset)
        run.base_acc = eval_onnx(run.base_onnx, run.ev_src.x, run.ev_src.y)
    run.summary["baseline"] = {"top1": run.base_acc["top1"], "top5": run.base_acc["top5"], "pruned": False}
    run.stage_acc.append({"stage": "fp32 (source)", **run.base_acc})


def compress(run: ExportRun) -> None:
    """At ``--input-size``, drop residual blocks, prune channels, then recover accuracy by distillation from the
    source model."""
    from edgecv.models.checkpoint import make_checkpoint, save_checkpoint

    opts = run.opts
    if run.resized:
        _at_input_size(run)
    depth = _drop_blocks(run) if opts.drop_blocks > 0 else None
    info = _prune(run) if opts.prune > 0 else None
    if opts.distill and run.student is run.teacher:  # --input-size the source's own: distilling would train it
        raise RecipeError(f"--distill: --input-size {opts.input_size} is the source's own input size, so there is "
                          "nothing to recover: add --prune R, --drop-blocks N, another --input-size, or --no-distill")
    if opts.distill:
        done = dict(zip(("top1_after_distill", "distill_mixed_precision", "distill_device"), _distill(run)))
        for part in (info, depth, run.summary.get("input_size")):
            if part is not None:
                part.update(done)
    if run.student is not run.teacher:
        ck = make_checkpoint(run.student, run.src.arch, run.src.arch_args, run.src.classes, run.spec,
                             pruned=opts.prune > 0)
        save_checkpoint(ck, run.tmp / PRUNED_MODEL)
    run.summary["prune"] = info
    if depth is not None:
        run.summary["depth"] = depth


def _at_input_size(run: ExportRun) -> None:
    from edgecv.train.engine import cannot_run_at

    run.student = copy.deepcopy(run.teacher)
    why = cannot_run_at(run.student, run.data.channels, run.data.input_size)
    if why:  # a head sized for one resolution (a flatten into a fixed Linear)
        raise RecipeError(f"--input-size {run.data.input_size}: {run.src.arch} cannot run at that size ({why})")
    acc = _torch_eval(run.student, run.ev.x, run.ev.y)
    run.stage_acc.append({"stage": f"at {run.data.input_size} px", **acc})
    run.summary["input_size"] = {"source": run.src.data.input_size, "export": run.data.input_size,
                                 "resize": run.data.resize, "top1_before_distill": acc["top1"]}


def _drop_blocks(run: ExportRun) -> Dict:
    """Remove ``--drop-blocks`` residual blocks whole, judged on the calibration images (edgecv.compress.depth)."""
    from edgecv.compress.depth import drop_blocks

    n = run.opts.drop_blocks
    with run.stages(f"drop {n} residual block(s)"):
        try:
            run.student, report = drop_blocks(copy.deepcopy(run.student), n, run.cal.x, run.shape, run.show_progress)
        except ValueError as e:
            msg = str(e)
            raise RecipeError(msg if msg.startswith("--drop-blocks") else f"--drop-blocks {n}: {msg}") from None
        acc = _torch_eval(run.student, run.ev.x, run.ev.y)
    run.stage_acc.append({"stage": f"{n} block(s) dropped", **acc})
    return {**report.as_dict(), "top1_after_drop": acc["top1"]}


def _prune(run: ExportRun) -> Dict:
    from edgecv.compress.prune import prune_channels

    opts = run.opts
    with run.stages(f"prune {opts.prune:.0%} of channels"):
        try:
            run.student, report = prune_channels(copy.deepcopy(run.student), run.shape, opts.prune,
                                                 opts.prune_round_to, run.cal.x,
                                                 opts.prune_method, run.show_progress)
        except ValueError as e:
            raise RecipeError(str(e) if str(e).startswith("--") else f"--prune-method: {e}") from None
        acc = _torch_eval(run.student, run.ev.x, run.ev.y)
    run.stage_acc.append({"stage": "pruned", **acc})
    return {**report.as_dict(), "top1_after_prune": acc["top1"]}


def _distill(run: ExportRun) -> Tuple[float, str, str]:
    from edgecv.compress.distill import DistillConfig, distill
    from edgecv.data.loaders import load_data
    from edgecv.train.engine import training_device

    if run.recipe is None:
        raise RecipeError("--distill: needs a recipe SOURCE (its training data)")
    o = run.opts
    size = f" at {run.data.input_size} px from the source at {run.src.data.input_size}" if run.resized else ""
    device = training_device()
    with run.stages(f"distill {o.distill_epochs} epoch(s){size} on {device.type}"):
        _, _, train_loader, val_loader, _ = load_data(run.recipe.data)
        cfg = DistillConfig(o.distill_epochs, o.distill_lr, o.temperature, o.alpha,
                            optimizer=o.distill_optimizer, batchnorm=run.recipe.train.batchnorm,
                            amp=run.recipe.train.amp, student_size=run.data.input_size if run.resized else None,
                            device=str(device))
        result = distill(run.student, run.teacher, train_loader, val_loader, cfg, show_progress=run.show_progress)
        acc = _torch_eval(run.student, run.ev.x, run.ev.y)
    run.stage_acc.append({"stage": "pruned + distilled" if run.pruned else "distilled",
                          **acc})
    return acc["top1"], result["mixed_precision"], result["device"]


def export_fp32(run: ExportRun) -> None:
    """The shipped fp32 ONNX, its parity with PyTorch, and its logits: what every int8 artefact must agree with."""
    from edgecv.export.gates import AccuracyGate, TuneSplit, eval_onnx, onnx_logits
    from edgecv.export.onnx_export import compare_with_torch, export_onnx
    from edgecv.metrics import fidelity

    run.fp32_path = run.tmp / FP32_MODEL
    with run.stages("ONNX export"):
        export_onnx(run.student, run.fp32_path, run.shape, run.opts.opset)
        run.summary["onnx_parity"] = compare_with_torch(run.student, str(run.fp32_path), torch.from_numpy(run.ev.x[:32]))
        run.fp32_acc = eval_onnx(run.fp32_path, run.ev.x, run.ev.y) if run.student is not run.teacher else run.base_acc
    run.ref_eval = onnx_logits(run.fp32_path, run.ev.x)
    t, ax = run.tune, run.agree.x if run.agree is not None else None
    base_tune = eval_onnx(run.base_onnx, run.tune_src.x, run.tune_src.y)["top1"]
    run.tune = TuneSplit(t.x, t.y, base_tune, None, run.cal.x[: min(64, len(run.cal))], ax, tune_sources(run))
    run.tune.ref_logits = onnx_logits(run.fp32_path, run.tune.inputs())
    run.gate = AccuracyGate(run.tune, Budget(run.opts.max_drop, run.opts.min_agreement), run.work, run.show_progress)
    run.artifacts = [{"file": FP32_MODEL, "target": tn, "precision": "fp32", **run.fp32_acc,
                      **fidelity(run.ref_eval, run.ref_eval, run.ev.y), "fallback_layers": [], "calibration": None}
                     for tn in run.opts.targets]


def quantize_int8(run: ExportRun) -> None:
    """Calibrate (each method, for ``--calib-method auto``), then climb the int8 ladder for each target."""
    from edgecv.export.int8 import int8_artefact
    from edgecv.export.quantize import calibrate

    o = run.opts
    for m in CALIB_METHODS if o.calib_method == "auto" else (o.calib_method,):
        with run.stages(f"int8 calibration ({m}{', GPTQ weights' if o.weight_rounding == 'gptq' else ''}, "
                        f"{len(run.cal)} images)"):
            run.calibs[m] = calibrate(run.fp32_path, run.cal.x, m, bias_correction=o.bias_correction,
                                      rounding=o.weight_rounding)
    for target in o.targets:
        run.artifacts.append(int8_artefact(run, target, run.calibs))


def bf16(run: ExportRun) -> None:
    """bf16 artefacts of the CPU targets whose runtime runs bf16 on this host (edgecv.export.bf16)."""
    from edgecv.export.bf16 import bf16_artefact

    for target in run.opts.targets:
        with run.stages(f"bf16 {target}: the fp32 model at bf16, on the tune split"):
            art = bf16_artefact(run, target)
        if art is not None:
            run.artifacts.append(art)


def check_fp32_drop(run: ExportRun) -> None:
    drop = (run.base_acc["top1"] - run.fp32_acc["top1"]) * 100
    if drop > run.opts.max_drop:
        o = run.opts
        what = " and ".join(([f"at {run.data.input_size} px"] if run.resized else []) +
                            (["pruned"] if run.pruned else []))
        less = " or ".join((["prune less"] if o.prune > 0 else []) + (["drop fewer blocks"] if o.drop_blocks else [])
                           + (["a larger --input-size"] if run.resized else []))
        run.failures.append(f"the fp32 model {what} is already {drop:.2f} points below the source (top-1 "
                            f"{run.fp32_acc['top1']:.4f} vs {run.base_acc['top1']:.4f}); {less}, or distill "
                            f"longer (budget --max-drop {run.opts.max_drop})")


def robustness_report(run: ExportRun) -> None:
    o = run.opts
    if o.corruptions == "none":
        return
    with run.stages(f"robustness under corruption ({o.corruptions}, {min(len(run.ev), o.corruption_images)} images)"):
        # the unpruned source joins the report only at the same input size: it cannot read the shipped model's
        unpruned = run.base_onnx if run.pruned and not run.resized else None
        run.summary["robustness"] = robustness(run.tmp, unpruned, run.artifacts, run.ev, run.spec, o,
                                               run.show_progress)
    refuse_if(corruption_failures(run.summary["robustness"], o))


def speed_and_defaults(run: ExportRun) -> None:
    """Every artefact timed on its target's runtime here; the fastest within budget is each target's default."""
    from edgecv.export.gates import speed_gate

    base_int8 = unpruned_int8(run)
    with run.stages("speed gate (this CPU, batch 1, 2 threads, each artefact on its target's runtime)"):
        # a device-built target's number here is its ONNX under ONNX Runtime on this CPU, reported but never
        # used to choose its default
        models = {"baseline_fp32": (run.base_onnx, None)}
        models.update({_label(a): (run.tmp / a["file"], targets.get(a["target"]), a["precision"])
                       for a in run.artifacts})
        models.update({f"unpruned_int8 {t}": (f, targets.get(t), "int8") for t, f in base_int8.items()})
        at_source_size = ["baseline_fp32"] + [f"unpruned_int8 {t}" for t in base_int8]
        lat = speed_gate(models, run.ev.x, inputs={k: run.ev_src.x for k in at_source_size})
    run.summary["baseline"]["latency_ms"] = lat["baseline_fp32"]["p50_ms"]
    for a in run.artifacts:
        a["latency_ms"], a["latency"] = lat[_label(a)]["p50_ms"], lat[_label(a)]
    if base_int8:
        ref = {t: lat[f"unpruned_int8 {t}"]["p50_ms"] for t in base_int8}
        run.summary["baseline"]["int8_latency_ms"] = ref
        for a in run.artifacts:
            if a["target"] in ref:
                a["speedup_vs_unpruned_int8"] = ref[a["target"]] / a["latency_ms"]
    run.summary["default"] = choose_defaults(run.artifacts, run.base_acc["top1"], run.opts.max_drop)
    run.summary["cpu_default"] = choose_cpu_default(run.artifacts, run.summary["default"])


UNPRUNED_CALIB_IMAGES = 32


def unpruned_int8(run: ExportRun) -> Dict[str, Path]:
    """When the export made the model smaller (pruned, blocks removed, fewer pixels): the unpruned source as plain
    all-int8 PTQ for each CPU target with an int8 artefact, the baseline its speed-up is measured against. Timed
    only, never judged: its activation ranges come from a few tune images at the source's size, and the graph, so
    the speed, does not depend on them."""
    cpu = sorted({a["target"] for a in run.artifacts if a["precision"] == "int8" and targets.get(a["target"]).host_latency})
    if not cpu or not (run.pruned or run.resized):
        return {}
    from edgecv.export.quantize import calibrate, quantize

    files = {t: run.work / f"unpruned_int8_{targets.get(t).file_tag}.onnx" for t in cpu}
    with run.stages(f"the unpruned source in int8 ({', '.join(cpu)}), to time the speed-up against"):
        calib = calibrate(run.base_onnx, run.tune_src.x[:UNPRUNED_CALIB_IMAGES], "minmax", bias_correction=False)
        for t, f in files.items():
            quantize(run.base_onnx, calib, f, t)
    return files


def write(run: ExportRun) -> Dict:
    from edgecv.export.bundle_writer import write_bundle

    unavailable = targets.exportable()[1]
    run.summary["targets_skipped"] = {t: unavailable.get(t, "not requested") for t in targets.names()
                                      if t not in run.opts.targets}
    run.summary["stages"] = run.stage_acc
    run.summary["engine"] = _engine_plan(run.opts)
    run.summary["golden"] = write_golden_vectors(run.tmp, run.fp32_path, run.ev, run.spec, run.opts)
    run.summary["seen_images"] = write_seen_images(run)
    return write_bundle(run.tmp, run.src, run.data, run.recipe, run.opts, run.artifacts, run.summary,
                        run.stages.times)


def _label(a: Dict) -> str:
    return f"{a['target']}:{a['file']}:{a['precision']}"


def _engine_plan(opts: ExportConfig) -> Dict:
    """Whether the TensorRT engine can be built here; otherwise how to build it on the device."""
    from edgecv.runtime.tensorrt.compat import trt_available

    ok, why = trt_available()
    hint = f"on the device: edgecv build BUNDLE{' --int8' if opts.int8 else ''}{' --fp16' if opts.fp16 else ''}"
    return {"built": False, "buildable_here": ok, "reason": why or "built after the bundle is written", "how": hint}


def _build_engine(out: Path, opts: ExportConfig) -> Dict:
    """Build into the engine cache (engines are device-specific, so never into the bundle)."""
    from edgecv.runtime.tensorrt.engine_build import build_engine_for_bundle

    try:
        return {"built": True, **build_engine_for_bundle(out, int8=opts.int8, fp16=opts.fp16,
                                                         max_batch=opts.max_batch)}
    except Exception as e:  # the bundle is complete without an engine; say why it is missing
        return {"built": False, "reason": f"engine build failed: {e}", "how": "edgecv build BUNDLE"}
