"""The int8 ladder for one target (docs/int8.md): post-training quantization with the calibration method that agrees
best, per-layer float fallback while outside the budget on the tune split, then the QAT rung; the artefact's numbers
are measured on the evaluation split, which chose nothing, and must hold there too."""
from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path
from typing import Dict, Tuple

from edgecv import targets
from edgecv.bundle.names import int8_model
from edgecv.export.gates import GateResult, TuneSplit, onnx_logits
from edgecv.metrics import Budget, agreement, fidelity, top1, topk_accuracy
from edgecv.recipe import CALIB_METHODS

log = logging.getLogger("edgecv.export")


def choose_calibration(fp32_path: str, calibs: Dict, tgt, out: Path, tune: TuneSplit) -> Tuple[str, Dict]:
    """The calibration method whose int8 model (no fallback) agrees best with fp32 on the tune split, then the
    best tune top-1, then the first in CALIB_METHODS order; and what each one reached."""
    from edgecv.export.quantize import quantize

    trials = {}
    for m, c in calibs.items():
        quantize(fp32_path, c, out, tgt)
        logits = onnx_logits(out, tune.inputs(), target=tgt)
        trials[m] = {"tune_agreement": agreement(tune.ref_logits, logits),
                     "tune_top1": top1(logits[: len(tune.y)], tune.y)}
    best = max(calibs, key=lambda m: (trials[m]["tune_agreement"], trials[m]["tune_top1"], -CALIB_METHODS.index(m)))
    return best, trials


# Where PTQ missed even with layers in float, the QAT weights are gated all int8, with no fallback search: they were
# fitted for the int8 network, and keeping layers in float undoes the fit (Lite0, TensorRT target, 25 layers in float
# on the 1,650 tune images: block-reconstructed 97.1% -> 93.9%, distilled 96.4% -> 94.2%); the search's per-layer
# sensitivity took 4-5 minutes per target there to find that out
NO_FALLBACK_AFTER_FIT = 0


def int8_artefact(run, target: str, calibs: Dict) -> Dict:
    """Climb the ladder for ``target`` in ``run`` (an edgecv.export.pipeline.ExportRun); returns the artefact's
    manifest entry, and adds the reason to ``run.failures`` when it misses the budget."""
    tgt = targets.get(target)
    name, trials = int8_model(tgt.file_tag), None
    if len(calibs) > 1:
        with run.stages(f"int8 {target}: calibration method on the {len(run.tune)} tune images"):
            method, trials = choose_calibration(str(run.fp32_path), calibs, tgt, run.tmp / name, run.tune)
    else:
        method = next(iter(calibs))
    with run.stages(f"int8 {target}: quantize and accuracy gate"):
        g = run.gate.run(str(run.fp32_path), calibs[method], tgt, run.tmp / name)
    ptq = {"ptq_passed": g.passed, "ptq_float_layers": len(g.fallback)}
    g, used_calib, rung = _qat_rung(run, tgt, name, g, method) if (not g.passed or g.fallback) and \
        run.opts.qat_epochs > 0 else (g, calibs[method], "ptq + fallback" if g.fallback else "ptq")
    if not g.passed:
        run.failures.append(g.reason)
    name = _share_identical(run.tmp, name, run.artifacts)
    held = _held_out(run, tgt, name, g)
    art = {"file": name, "target": target, "precision": "int8", **held, "fallback_layers": g.fallback,
           "fallback_search": g.search, "fallback_ranked_on": g.ranked_on, "rung": rung,
           "tune_agreement_by_source": g.chosen().get("agreement_by_source"),
           "qat": {**run.qat["info"], **ptq} if rung.startswith("qat") else None,
           "calibration": {"method": method, "samples": len(run.cal), "chosen_from": trials,
                           "bias_correction": bool(used_calib.input_means),
                           "weight_rounding": "gptq" if used_calib.rounded else "nearest"}}
    _post_quantize(run, tgt, name, used_calib)
    return art


def _qat_rung(run, tgt, name: str, g: GateResult, method: str) -> Tuple[GateResult, object, str]:
    """QAT when PTQ missed even with layers in float, and when it passed only by keeping layers in float (they can
    cost int8 speed): a QAT artefact that passes with fewer float layers is taken when PTQ missed, and otherwise
    when it is faster (measured here for a CPU target; for TensorRT, fewer float layers keep more int8 fusions).
    Its own fallback search stops short of what PTQ needed; where PTQ missed, there is none (NO_FALLBACK_AFTER_FIT).
    ``(gate result, calibration, rung)``."""
    from edgecv.export.qat_rung import describe, fitting_method, qat_is_faster, run_qat, take_qat

    ptq_file = run.work / f"ptq_{name}"
    shutil.copyfile(run.tmp / name, ptq_file)
    if not run.qat:  # the QAT rung runs at most once, for the first target that needs it
        how = fitting_method(run.student, run.cal, run.opts)
        with run.stages(describe(run.opts, how, len(run.qat_images), len(run.cal))):
            run.qat.update(run_qat(run.student, run.cal, run.tune, run.tune.ref_logits, run.opts, run.work, run.shape,
                                   images=run.qat_images, method=method, fitting=how,
                                   show_progress=run.show_progress))
    with run.stages(f"int8 {tgt.name}: quantize the QAT weights and accuracy gate"):
        g2 = run.gate.run(str(run.qat["onnx"]), run.qat["calib"], tgt, run.tmp / name,
                          max_fallback=len(g.fallback) - 1 if g.passed else NO_FALLBACK_AFTER_FIT)
    log.info("%s int8: PTQ %s with %d layer(s) in float; QAT %s with %d", tgt.name, "passed" if g.passed else "missed",
             len(g.fallback), "passed" if g2.passed else "missed", len(g2.fallback))
    if take_qat(g, g2, tgt, functools.partial(qat_is_faster, ptq_file, run.tmp / name, tgt, run.tune.x)):
        return g2, run.qat["calib"], "qat" + (" + fallback" if g2.fallback else "")
    if not g.passed:
        g.reason += f"; after QAT: {g2.reason}"
    shutil.copyfile(ptq_file, run.tmp / name)  # the QAT gate wrote over PTQ's file
    return g, run.calibs[method], "ptq + fallback" if g.fallback else "ptq"


def _held_out(run, tgt, name: str, g: GateResult) -> Dict:
    """The artefact's numbers on the evaluation split; a miss there is a refusal (the budget held on tune only)."""
    ev, base = run.ev, run.base_acc["top1"]
    logits = onnx_logits(run.tmp / name, ev.x, target=tgt)
    held = {**topk_accuracy(logits, ev.y), **fidelity(run.ref_eval, logits, ev.y)}
    held["within_budget"] = Budget(run.opts.max_drop, run.opts.min_agreement).within(base, held["top1"],
                                                                                      held["agreement"])
    if g.passed and not held["within_budget"]:
        run.failures.append(
            f"{tgt.name} int8 on the {len(ev)} evaluation images: top-1 {held['top1']:.4f} vs fp32 source {base:.4f} "
            f"({(base - held['top1']) * 100:.2f} points, budget {run.opts.max_drop}), agreement with fp32 "
            f"{held['agreement']:.1%} (floor {run.opts.min_agreement:.1%}): the budget held on the {len(run.tune)} "
            "tune images only")
    return held


def _post_quantize(run, tgt, name: str, calib) -> None:
    """The target's own steps after quantizing (TensorRT: the Q/DQ rule check and the calibration cache)."""
    if tgt.post_quantize:
        import onnx

        qdq = onnx.load(str(run.tmp / name))
        for step in tgt.post_quantize:
            targets.load(step)(qdq, run.tmp, name, calib)


def _share_identical(tmp: Path, name: str, artifacts) -> str:
    """An int8 file byte-identical to one already written for another target (the same quantizer settings
    and fallback) is not stored twice: the artefact names the existing file."""
    from edgecv.utils.io import sha256_file

    digest = sha256_file(tmp / name)
    for a in artifacts:
        if a["precision"] == "int8" and a["file"] != name and sha256_file(tmp / a["file"]) == digest:
            (tmp / name).unlink()
            return a["file"]
    return name
