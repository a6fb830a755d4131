"""The export ladder's last rung: quantization-aware fine-tuning when post-training quantization and per-layer
fallback miss the budget (edgecv.compress.qat does the training; this module runs it for an export)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch

from edgecv.metrics import agreement
from edgecv.recipe import ExportConfig

log = logging.getLogger("edgecv.export")


def run_qat(student: torch.nn.Module, cal, tune, ref_tune: np.ndarray, opts: ExportConfig, work: Path, shape,
            **options) -> Dict:
    """Fine-tune a fake-quantized copy of ``student`` against ``student`` itself on unlabelled images; returns the
    fine-tuned float ONNX and its calibration (on ``cal``), from which each target's int8 artefact is quantized and
    gated again. ``tune`` (its inputs, against ``ref_tune``) only reports progress: the agreement of the
    fake-quantized model. ``options``: ``images`` (what QAT trains on; default the calibration images),
    ``method`` (the calibration method, default minmax), ``show_progress`` (True)."""
    from edgecv.compress.qat import finetune, prepare_qat, strip_fake_quant
    from edgecv.export.onnx_export import export_onnx
    from edgecv.export.quantize import calibrate
    from edgecv.train.engine import device_name, device_of, training_device

    images = options.get("images") or cal
    method, show_progress = options.get("method", "minmax"), options.get("show_progress", True)
    tune_x = tune.inputs() if hasattr(tune, "inputs") else tune.x

    def check(m):
        dev = device_of(m)
        with torch.no_grad():
            logits = torch.cat([m(torch.from_numpy(tune_x[i: i + 64]).to(dev)).float().cpu()
                                for i in range(0, len(tune_x), 64)]).numpy()
        return {"tune_agreement_fake_quant": agreement(ref_tune, logits)}

    q = prepare_qat(student, cal.x[: min(len(cal), 256)])
    before = check(q.eval())["tune_agreement_fake_quant"]
    device = training_device()
    res = finetune(q, student, images.x if hasattr(images, "x") else images, epochs=opts.qat_epochs, lr=opts.qat_lr,
                   seed=opts.calib_seed, check=check, show_progress=show_progress,
                   keep_best="tune_agreement_fake_quant", device=str(device))
    path = work / "qat_fp32.onnx"
    export_onnx(strip_fake_quant(q), path, shape, opts.opset)
    # No bias correction here: QAT trained the weights for their own rounding, and correcting (W_q - W).E[x] again
    # undoes what it learnt (Lite0, 150 images of QAT, judged on 175 others: TensorRT-target KL 0.0047 without,
    # 0.0086 with)
    calib = calibrate(path, cal.x, method, bias_correction=False)
    info = {"epochs": res.epochs, "lr": res.lr, "steps": res.steps, "images": len(images),
            "teacher": "the shipped fp32 model", "device": device_name(device),
            "bias_correction": False, "tune_agreement_fake_quant_before": before, "history": res.history,
            "kept_epoch": res.kept_epoch}
    return {"onnx": path, "calib": calib, "info": info}

# When PTQ (with float layers) and QAT (with fewer) both meet the budget on a CPU target, QAT's artefact must be at
# least this much faster: two runs of the same export timed near-ties both ways (OpenVINO, 0.107 ms each)
QAT_SPEED_MARGIN = 0.95


def qat_is_faster(ptq_file: Path, qat_file: Path, target, x: np.ndarray) -> bool:
    """Whether the QAT artefact runs clearly faster than PTQ's on this host (batch 1, timed together)."""
    from edgecv.export.gates import host_p50

    p50 = host_p50({"ptq": ptq_file, "qat": qat_file}, target, x)
    log.info("%s int8: PTQ %.3f ms, QAT %.3f ms (batch 1, this host)", target.name, p50["ptq"], p50["qat"])
    return p50["qat"] < QAT_SPEED_MARGIN * p50["ptq"]


def take_qat(ptq, qat, target, qat_faster: Callable[[], bool]) -> bool:
    """Whether the QAT artefact replaces PTQ's (both :class:`~edgecv.export.gates.GateResult` on the tune split).
    QAT is tried when PTQ missed the budget, or met it only with layers kept in float. A passing QAT artefact is
    taken when PTQ missed; when both passed, for a target whose speed this host measures (``host_latency``) when
    ``qat_faster()`` (:func:`qat_is_faster`) says so, since a float layer is not always slower on a CPU runtime;
    for TensorRT, when it keeps fewer layers in float (each breaks int8 fusions there)."""
    if not qat.passed:
        return False
    if not ptq.passed:
        return True
    if len(qat.fallback) >= len(ptq.fallback):
        return False
    return qat_faster() if target.host_latency else True
