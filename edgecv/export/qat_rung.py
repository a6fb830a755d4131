"""The export ladder's last rung: quantization-aware fitting when post-training quantization and per-layer fallback
miss the budget (edgecv.compress.blockwise or edgecv.compress.qat does the fitting; this module runs it for an
export)."""
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
    """Fit a fake-quantized copy of ``student`` to ``student`` itself on unlabelled images (block by block on the
    calibration images, or end to end by distillation on ``images``: :func:`fitting_method`); returns the fitted float ONNX
    and its calibration (on ``cal``), from which each target's int8 artefact is quantized and gated again. ``tune``
    (its inputs, against ``ref_tune``) only reports progress: the agreement of the fake-quantized model.
    ``options``: ``images`` (what distillation trains on; default the calibration images), ``method`` (the
    calibration method, default minmax), ``fitting`` (:func:`fitting_method`'s answer, when the caller has it),
    ``show_progress`` (True)."""
    from edgecv.compress.qat import prepare_qat, strip_fake_quant
    from edgecv.export.onnx_export import export_onnx
    from edgecv.export.quantize import calibrate
    from edgecv.train.engine import device_name, training_device

    images = options.get("images") or cal
    calib_method, show_progress = options.get("method", "minmax"), options.get("show_progress", True)
    check = _checker(tune, ref_tune)
    q = prepare_qat(student, cal.x[: min(len(cal), 256)])
    before = check(q.eval())["tune_agreement_fake_quant"]
    device = training_device()
    info = {"method": options.get("fitting") or fitting_method(student, cal, opts),
            "teacher": "the shipped fp32 model", "device": device_name(device), "bias_correction": False,
            "tune_agreement_fake_quant_before": before}
    if info["method"] == "blocks":
        info.update(_blocks(q, student, cal, opts, str(device), show_progress), **check(q.eval()))
    else:
        info.update(_distill(q, student, images, opts, str(device), check, show_progress))
    path = work / "qat_fp32.onnx"
    export_onnx(strip_fake_quant(q), path, shape, opts.opset)
    # No bias correction here: QAT trained the weights for their own rounding, and correcting (W_q - W).E[x] again
    # undoes what it learnt (Lite0, 150 images of QAT, judged on 175 others: TensorRT-target KL 0.0047 without,
    # 0.0086 with)
    calib = calibrate(path, cal.x, calib_method, bias_correction=False)
    return {"onnx": path, "calib": calib, "info": info}


def fitting_method(student: torch.nn.Module, cal, opts: ExportConfig) -> str:
    """How the QAT rung fits: ``blocks`` (block-wise reconstruction) for ``--qat-method auto`` where the network
    cuts into blocks (edgecv.compress.blockwise.units), else ``distill`` (end to end); ``--qat-method blocks`` on a
    network that does not cut is an error naming it."""
    from edgecv.compress.blockwise import units
    from edgecv.errors import RecipeError

    if opts.qat_method == "distill":
        return "distill"
    cut = units(student.eval(), torch.from_numpy(np.ascontiguousarray(cal.x[:2])))  # units runs without grad
    if cut is None and opts.qat_method == "blocks":
        raise RecipeError(f"--qat-method blocks: {type(student).__name__} does not cut into blocks whose chain gives "
                          "its own output (known: EfficientNet-Lite, ResNet, features + classifier networks); use "
                          "--qat-method distill")
    return "blocks" if cut is not None else "distill"


def describe(opts: ExportConfig, how: str, images: int, calibration: int) -> str:
    """The QAT rung's stage line: what it runs, on how many images."""
    if how == "blocks":
        return (f"QAT rung: block-wise reconstruction, {opts.qat_block_steps} steps a block, on the "
                f"{min(calibration, BLOCK_IMAGES)} calibration images")
    return f"QAT rung: {opts.qat_epochs} epoch(s) of quantization-aware distillation from fp32 on {images} unlabelled " \
           "images"


# The most calibration images block-wise reconstruction fits on: it holds three copies of each unit's activations
# for all of them (Lite0's stem output: 1.6 MB an image at 224 px)
BLOCK_IMAGES = 1024
BLOCK_LR = 5e-5  # Adam, cosine-decayed; Lite0 (tools/block_reconstruction.py): 2e-5 and 5e-5 both converged


def _blocks(q, student, cal, opts: ExportConfig, device: str, show_progress: bool) -> Dict:
    from edgecv.compress.blockwise import BlockConfig, reconstruct
    from edgecv.errors import ExportError

    x = cal.x[:BLOCK_IMAGES]
    cfg = BlockConfig(steps=opts.qat_block_steps, lr=BLOCK_LR, seed=opts.calib_seed, device=device)
    trace = reconstruct(student, q, x, cfg, show_progress=show_progress)
    if trace is None:  # fitting_method cut the fp32 network; its fake-quantized copy must cut the same way
        raise ExportError(f"--qat-method blocks: the fake-quantized {type(student).__name__} does not cut into the "
                          "blocks its fp32 network does; use --qat-method distill")
    return {"steps_per_block": cfg.steps, "lr": cfg.lr, "qdrop": cfg.qdrop, "batch": cfg.batch, "images": len(x),
            "blocks": len(trace), "seconds": trace[-1]["elapsed_s"], "trace": trace}


def _distill(q, student, images, opts: ExportConfig, device: str, check, show_progress: bool) -> Dict:
    from edgecv.compress.qat import finetune

    res = finetune(q, student, images.x if hasattr(images, "x") else images, epochs=opts.qat_epochs, lr=opts.qat_lr,
                   seed=opts.calib_seed, check=check, show_progress=show_progress,
                   keep_best="tune_agreement_fake_quant", device=device)
    return {"epochs": res.epochs, "lr": res.lr, "steps": res.steps, "images": len(images), "history": res.history,
            "kept_epoch": res.kept_epoch}


def _checker(tune, ref_tune: np.ndarray) -> Callable:
    """The fake-quantized model's agreement with fp32 on the tune inputs (on whatever device it is)."""
    from edgecv.train.engine import device_of

    tune_x = tune.inputs() if hasattr(tune, "inputs") else tune.x

    def check(m):
        dev = device_of(m)
        with torch.no_grad():
            logits = torch.cat([m(torch.from_numpy(tune_x[i: i + 64]).to(dev)).float().cpu()
                                for i in range(0, len(tune_x), 64)]).numpy()
        return {"tune_agreement_fake_quant": agreement(ref_tune, logits)}

    return check

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
