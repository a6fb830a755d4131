"""Accuracy and speed gates: an int8 model that is less accurate or slower than fp32 is never shipped silently."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from tqdm import tqdm

from edgecv.export.quantize import Calibration, quantizable_nodes, quantize
from edgecv.metrics import Budget, agreement, mean_kl, topk_accuracy
from edgecv.runtime.latency import measure_interleaved

log = logging.getLogger("edgecv.export")


def host_backend(path: str | os.PathLike, target=None, threads: int = 2):
    """The runtime that judges ``path`` on the export host: the target's own backend when the target runs on
    this kind of host (``host_latency``), else ONNX Runtime (TensorRT's Q/DQ ONNX, measured on the device)."""
    from edgecv import targets

    t = target if target is not None and target.host_latency else targets.host_reference()
    return t.backend_class().for_file(str(path), threads=threads)[0]


def onnx_logits(path: str | os.PathLike, x: np.ndarray, batch: int = 64, threads: int = 2, target=None) -> np.ndarray:
    be = host_backend(path, target, threads)
    try:
        return np.concatenate([be.infer(np.ascontiguousarray(x[i: i + batch])) for i in range(0, len(x), batch)])
    finally:
        be.close()


def eval_onnx(path, x: np.ndarray, y: np.ndarray, target=None) -> Dict[str, float]:
    return topk_accuracy(onnx_logits(path, x, target=target), y)


@dataclass
class GateResult:
    file: str
    top1: float
    top5: float
    fallback: List[Dict] = field(default_factory=list)  # [{node, sensitivity_kl, top1_after, latency_ms_after}]
    passed: bool = True
    reason: str = ""


def sensitivity(fp32_path: str, calib: Calibration, target, x: np.ndarray, workdir: Path,
                show_progress: bool = True) -> List[Dict]:
    """Per compute node: KL(fp32 || int8) on ``x`` when only that node is kept in float.

    The nodes whose exclusion lowers the KL most are the ones quantization hurts most.
    """
    ref = onnx_logits(fp32_path, x)
    base = workdir / "sens_all.onnx"
    quantize(fp32_path, calib, base, target)
    kl_all = mean_kl(ref, onnx_logits(base, x, target=target))
    nodes = quantizable_nodes(fp32_path)
    out = []
    for node in tqdm(nodes, desc=f"sensitivity ({target.name})", leave=False, disable=not show_progress):
        p = workdir / "sens_one.onnx"
        quantize(fp32_path, calib, p, target, exclude=[node])
        kl = mean_kl(ref, onnx_logits(p, x, target=target))
        out.append({"node": node, "kl_without": kl, "gain": kl_all - kl})
    return sorted(out, key=lambda r: -r["gain"])


def accuracy_gate(fp32_path: str, calib: Calibration, target, out_path: Path, x: np.ndarray, y: np.ndarray,
                  ref_top1: float, max_drop: float, sens_x: np.ndarray, workdir: Path,
                  max_fallback_frac: float = 0.5, show_progress: bool = True, min_agreement: float = 0.0,
                  ref_logits: Optional[np.ndarray] = None, max_fallback: Optional[int] = None) -> GateResult:
    """Quantize for ``target``; while top-1 drops more than ``max_drop`` points below ``ref_top1`` or agrees
    with the fp32 logits ``ref_logits`` on fewer than ``min_agreement`` of ``x``, keep the most sensitive
    layers in float, one at a time, up to ``max_fallback_frac`` of them and at most ``max_fallback`` (or give up).
    ``x``/``y`` is the tune split: the numbers reported for the artefact are measured afterwards on images these
    decisions never saw."""
    def measure_now():
        logits = onnx_logits(out_path, x, target=target)
        acc = topk_accuracy(logits, y)
        return acc, (agreement(ref_logits, logits) if ref_logits is not None else 1.0)

    def within(acc, agree):
        return Budget(max_drop, min_agreement).within(ref_top1, acc["top1"], agree)

    quantize(fp32_path, calib, out_path, target)
    acc, agree = measure_now()
    res = GateResult(out_path.name, acc["top1"], acc["top5"])
    drop = (ref_top1 - acc["top1"]) * 100
    log.info("%s int8 (%s): tune top-1 %.4f, drop %.2f points (budget %.2f), agreement %.3f (floor %.3f)",
             target.name, calib.method, acc["top1"], drop, max_drop, agree, min_agreement)
    if within(acc, agree):
        return res
    if max_fallback == 0:
        res.passed = False
        res.reason = (f"{target.name} int8 on the tune split: top-1 {acc['top1']:.4f}, {drop:.2f} points below fp32 "
                      f"{ref_top1:.4f}, agreement {agree:.1%}, with no layer in float (budget --max-drop {max_drop}, "
                      f"--min-agreement {min_agreement})")
        return res
    ranked = sensitivity(fp32_path, calib, target, sens_x, workdir, show_progress)
    limit = max(1, int(len(ranked) * max_fallback_frac))
    if max_fallback is not None:
        limit = min(limit, max_fallback)
    excluded: List[str] = []
    one = np.ascontiguousarray(x[:1])
    for r in ranked[:limit]:
        excluded.append(r["node"])
        quantize(fp32_path, calib, out_path, target, exclude=excluded)
        acc, agree = measure_now()
        drop = (ref_top1 - acc["top1"]) * 100
        be = host_backend(out_path, target)
        lat = measure_interleaved({"m": (lambda be=be: be.infer(one))}, warmup=5, iters=50, rounds=1)["m"]["p50_ms"]
        be.close()
        res.fallback.append({"node": r["node"], "sensitivity_gain": r["gain"], "top1_after": acc["top1"],
                             "agreement_after": agree, "latency_ms_after": lat})
        log.info("fallback %s -> tune top-1 %.4f (drop %.2f), agreement %.3f, %.3f ms", r["node"], acc["top1"],
                 drop, agree, lat)
        if within(acc, agree):
            res.top1, res.top5 = acc["top1"], acc["top5"]
            return res
    res.top1, res.top5, res.passed = acc["top1"], acc["top5"], False
    res.reason = (f"{target.name} int8 on the tune split: top-1 {acc['top1']:.4f}, {drop:.2f} points below fp32 "
                  f"{ref_top1:.4f}, agreement {agree:.1%}, even with {len(excluded)} layers in float (budget "
                  f"--max-drop {max_drop}, --min-agreement {min_agreement})")
    return res


def host_p50(candidates: Dict[str, str | os.PathLike], target, batch: np.ndarray) -> Dict[str, float]:
    """Batch-1 p50 in ms on this host of each candidate (label -> artefact file, all for ``target``), timed in
    interleaved rounds so that a slow spell of the machine falls on all of them."""
    res = speed_gate({k: (p, target) for k, p in candidates.items()}, batch, iters=100)
    return {k: v["p50_ms"] for k, v in res.items()}


def speed_gate(models: Dict[str, tuple], batch: np.ndarray, threads: int = 2, iters: int = 200) -> Dict[str, Dict]:
    """Batch-1 latency on this CPU, interleaved; ``models`` maps a label to ``(file, target or None)``, each run
    by the runtime that judges it here (``host_backend``)."""
    one = np.ascontiguousarray(batch[:1])
    backends = {k: host_backend(p, t, threads) for k, (p, t) in models.items()}
    try:
        fns = {k: (lambda be=be: be.infer(one)) for k, be in backends.items()}
        # settle: one runtime's spinning worker threads must not slow the next candidate (tools/ort_tuning.py)
        return measure_interleaved(fns, warmup=20, iters=iters, rounds=10, settle_s=0.02)
    finally:
        for be in backends.values():
            be.close()
