"""Accuracy and speed gates: an int8 model that is less accurate or slower than fp32 is never shipped silently."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from edgecv.export.quantize import Calibration, quantizable_nodes, quantize
from edgecv.metrics import Budget, agreement, mean_kl, topk_accuracy
from edgecv.runtime.latency import measure_interleaved

log = logging.getLogger("edgecv.export")


def host_backend(path: str | os.PathLike, target=None, threads: int = 2, precision: Optional[str] = None):
    """The runtime that judges ``path`` on the export host: the target's own backend when the target runs on
    this kind of host (``host_latency``), else ONNX Runtime (TensorRT's Q/DQ ONNX, measured on the device).
    ``precision="bf16"``: the fp32 file run at bf16 (a CPU runtime that offers it)."""
    from edgecv import targets

    t = target if target is not None and target.host_latency else targets.host_reference()
    kw = {"precision": "bf16"} if precision == "bf16" else {}
    return t.backend_class().for_file(str(path), threads=threads, **kw)[0]


def backend_logits(be, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """An open backend's logits for every image of ``x``, ``batch`` at a time."""
    return np.concatenate([be.infer(np.ascontiguousarray(x[i: i + batch])) for i in range(0, len(x), batch)])


def onnx_logits(path: str | os.PathLike, x: np.ndarray, batch: int = 64, threads: int = 2, target=None) -> np.ndarray:
    be = host_backend(path, target, threads)
    try:
        return backend_logits(be, x, batch)
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


@dataclass
class TuneSplit:
    """What every int8 decision is judged on, never on the evaluation split: labelled images ``x``/``y`` (top-1
    against the source's ``ref_top1``), optional unlabelled ``ax`` (agreement only), the shipped fp32 model's
    logits on ``x`` then ``ax`` (``ref_logits``), and ``sens_x``, the images the per-layer sensitivity is ranked on."""

    x: np.ndarray
    y: np.ndarray
    ref_top1: float
    ref_logits: np.ndarray
    sens_x: np.ndarray
    ax: Optional[np.ndarray] = None

    def inputs(self) -> np.ndarray:
        return self.x if self.ax is None or not len(self.ax) else np.concatenate([self.x, self.ax])

    def __len__(self) -> int:
        return len(self.x) + (0 if self.ax is None else len(self.ax))

    def judge(self, logits: np.ndarray) -> Tuple[Dict, float]:
        """(top-1/top-5 on the labelled images, top-1 agreement with fp32 on all of them)."""
        return topk_accuracy(logits[: len(self.y)], self.y), agreement(self.ref_logits, logits)


class AccuracyGate:
    """The int8 budget on the tune split: quantize for a target; while outside the budget, keep the most sensitive
    layers in float, one at a time (up to ``max_fallback_frac`` of them), or give up. The numbers reported for an
    artefact are measured afterwards on images these decisions never saw."""

    def __init__(self, tune: TuneSplit, budget: Budget, workdir: Path, show_progress: bool = True,
                 max_fallback_frac: float = 0.5):
        self.tune, self.budget, self.workdir = tune, budget, workdir
        self.show_progress, self.max_fallback_frac = show_progress, max_fallback_frac

    def _measure(self, path: Path, target) -> Tuple[Dict, float]:
        return self.tune.judge(onnx_logits(path, self.tune.inputs(), target=target))

    def _within(self, acc: Dict, agree: float) -> bool:
        return self.budget.within(self.tune.ref_top1, acc["top1"], agree)

    def _missed(self, target, acc: Dict, agree: float, floats: str) -> str:
        drop = (self.tune.ref_top1 - acc["top1"]) * 100
        return (f"{target.name} int8 on the tune split: top-1 {acc['top1']:.4f}, {drop:.2f} points below fp32 "
                f"{self.tune.ref_top1:.4f}, agreement {agree:.1%}, {floats} (budget --max-drop {self.budget.max_drop}, "
                f"--min-agreement {self.budget.min_agreement})")

    def run(self, fp32_path: str, calib: Calibration, target, out_path: Path,
            max_fallback: Optional[int] = None) -> GateResult:
        """Quantize ``fp32_path`` for ``target`` into ``out_path``, keeping at most ``max_fallback`` layers in float."""
        quantize(fp32_path, calib, out_path, target)
        acc, agree = self._measure(out_path, target)
        res = GateResult(out_path.name, acc["top1"], acc["top5"])
        log.info("%s int8 (%s): tune top-1 %.4f, drop %.2f points (budget %.2f), agreement %.3f (floor %.3f)",
                 target.name, calib.method, acc["top1"], (self.tune.ref_top1 - acc["top1"]) * 100,
                 self.budget.max_drop, agree, self.budget.min_agreement)
        if self._within(acc, agree):
            return res
        if max_fallback == 0:
            res.passed, res.reason = False, self._missed(target, acc, agree, "with no layer in float")
            return res
        return self._fall_back(fp32_path, calib, target, out_path, res, max_fallback, (acc, agree))

    def _fall_back(self, fp32_path, calib, target, out_path: Path, res: GateResult, max_fallback,
                   measured: Tuple[Dict, float]) -> GateResult:
        acc, agree = measured
        ranked = sensitivity(fp32_path, calib, target, self.tune.sens_x, self.workdir, self.show_progress)
        limit = max(1, int(len(ranked) * self.max_fallback_frac))
        limit = limit if max_fallback is None else min(limit, max_fallback)
        excluded: List[str] = []
        one = np.ascontiguousarray(self.tune.x[:1])
        for r in ranked[:limit]:
            excluded.append(r["node"])
            quantize(fp32_path, calib, out_path, target, exclude=excluded)
            acc, agree = self._measure(out_path, target)
            be = host_backend(out_path, target)
            lat = measure_interleaved({"m": (lambda be=be: be.infer(one))}, warmup=5, iters=50, rounds=1)["m"]["p50_ms"]
            be.close()
            res.fallback.append({"node": r["node"], "sensitivity_gain": r["gain"], "top1_after": acc["top1"],
                                 "agreement_after": agree, "latency_ms_after": lat})
            log.info("fallback %s -> tune top-1 %.4f, agreement %.3f, %.3f ms", r["node"], acc["top1"], agree, lat)
            res.top1, res.top5 = acc["top1"], acc["top5"]
            if self._within(acc, agree):
                return res
        res.passed = False
        res.reason = self._missed(target, acc, agree, f"even with {len(excluded)} layers in float")
        return res


def host_p50(candidates: Dict[str, str | os.PathLike], target, batch: np.ndarray) -> Dict[str, float]:
    """Batch-1 p50 in ms on this host of each candidate (label -> artefact file, all for ``target``), timed in
    interleaved rounds so that a slow spell of the machine falls on all of them."""
    res = speed_gate({k: (p, target) for k, p in candidates.items()}, batch, iters=100)
    return {k: v["p50_ms"] for k, v in res.items()}


def speed_gate(models: Dict[str, tuple], batch: np.ndarray, threads: int = 2, iters: int = 200) -> Dict[str, Dict]:
    """Batch-1 latency on this CPU, interleaved; ``models`` maps a label to ``(file, target or None[, precision])``,
    each run by the runtime that judges it here (``host_backend``)."""
    one = np.ascontiguousarray(batch[:1])
    backends = {}
    try:  # built inside the try: a SIGTERM while the third one compiles still closes the first two
        for k, m in models.items():
            backends[k] = host_backend(m[0], m[1], threads, *m[2:])
        fns = {k: (lambda be=be: be.infer(one)) for k, be in backends.items()}
        # settle: one runtime's spinning worker threads must not slow the next candidate (tools/ort_tuning.py)
        return measure_interleaved(fns, warmup=20, iters=iters, rounds=10, settle_s=0.02)
    finally:
        for be in backends.values():
            be.close()
