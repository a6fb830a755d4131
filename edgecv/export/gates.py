"""Accuracy and speed gates: an int8 model that is less accurate or slower than fp32 is never shipped silently."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from edgecv.export.quantize import Calibration, quantizable_nodes, quantize
from edgecv.metrics import (
    Budget,
    agreement,
    agreement_by_group,
    changed_confidences,
    class_changes,
    describe_changes,
    error_scale_needed,
    mean_kl,
    topk_accuracy,
)
from edgecv.runtime.latency import measure_interleaved
from edgecv.utils.progress import progress

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
    fallback: List[Dict] = field(default_factory=list)  # the layers kept in float: [{node, sensitivity_gain}]
    # what the fallback search tried: [{layers, top1, top5, agreement, latency_ms, within_budget}] by count
    search: List[Dict] = field(default_factory=list)
    passed: bool = True
    reason: str = ""
    ranked_on: Optional[str] = None  # the target whose runtime ranked the layers (another one with equal settings)

    def chosen(self) -> Dict:
        """What the tune split measured for the file on disk (the trial of the count of layers kept in float)."""
        return next((t for t in self.search if t["layers"] == len(self.fallback)), {})


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
    for node in progress(nodes, desc=f"sensitivity ({target.name})", show=show_progress):
        p = workdir / "sens_one.onnx"
        quantize(fp32_path, calib, p, target, exclude=[node])
        kl = mean_kl(ref, onnx_logits(p, x, target=target))
        out.append({"node": node, "kl_without": kl, "gain": kl_all - kl})
    return sorted(out, key=lambda r: -r["gain"])


@dataclass
class TuneSplit:
    """What every int8 decision is judged on, never on the evaluation split: labelled images ``x``/``y`` (top-1
    against the source's ``ref_top1``), optional unlabelled ``ax`` (agreement only), the shipped fp32 model's
    logits on ``x`` then ``ax`` (``ref_logits``), and ``sens_x``, the images the per-layer sensitivity is ranked on.
    ``sources`` names where each image of ``inputs()`` came from (the labelled held-out images, each pool): agreement
    is then also reported per source."""

    x: np.ndarray
    y: np.ndarray
    ref_top1: float
    ref_logits: np.ndarray
    sens_x: np.ndarray
    ax: Optional[np.ndarray] = None
    sources: Optional[List[str]] = None

    def inputs(self) -> np.ndarray:
        return self.x if self.ax is None or not len(self.ax) else np.concatenate([self.x, self.ax])

    def __len__(self) -> int:
        return len(self.x) + (0 if self.ax is None else len(self.ax))

    def judge(self, logits: np.ndarray) -> Tuple[Dict, float]:
        """(top-1/top-5 on the labelled images, top-1 agreement with fp32 on all of them)."""
        return topk_accuracy(logits[: len(self.y)], self.y), agreement(self.ref_logits, logits)

    def by_source(self, logits: np.ndarray, floor: float) -> Optional[Dict[str, Dict]]:
        """Agreement with fp32 per source of the tune images (and, for a source under ``floor``, the share of its
        logit error that ``floor`` allows there), or None where they all come from one."""
        if not self.sources or len(set(self.sources)) < 2:
            return None
        parts = agreement_by_group(self.ref_logits, logits, self.sources)
        names = np.asarray(self.sources, dtype=object)
        for name, p in parts.items():
            if p["agreement"] < floor:
                rows = names == name
                p["error_scale_needed"] = error_scale_needed(self.ref_logits[rows], logits[rows], floor)
        return parts


# A ranking measured on one runtime is reused for another running the same int8 file when their logits differ by at
# most this share of the int8 model's own error (mean KL to fp32): each layer's share of that error, which the
# ranking orders, is then the same on both. Where they differ, it is not: Lite0 on a Zen 3 EPYC without VNNI, whose
# OpenVINO int8 sums saturate (75% agreement with fp32 on the export's tune images, ONNX Runtime 96.5%), the two
# runtimes' top 25 layers share 11, and which ranking served OpenVINO better swung both ways (docs/int8.md)
RUNTIME_ALIKE = 0.1


class AccuracyGate:
    """The int8 budget on the tune split: quantize for a target; while outside the budget, keep the fewest of the
    most sensitive layers in float that bring it within (up to ``max_fallback_frac`` of them), or give up. The
    numbers reported for an artefact are measured afterwards on images these decisions never saw."""

    def __init__(self, tune: TuneSplit, budget: Budget, workdir: Path, show_progress: bool = True,
                 max_fallback_frac: float = 0.5):
        self.tune, self.budget, self.workdir = tune, budget, workdir
        self.show_progress, self.max_fallback_frac = show_progress, max_fallback_frac
        self._rankings: List[Tuple[str, Calibration, Dict, str, np.ndarray, List[Dict]]] = []

    def _ranking(self, fp32_path: str, calib: Calibration, target, int8_logits: np.ndarray) -> Tuple[List[Dict], str]:
        """The layers by sensitivity for ``target``, and the target they were ranked on. A target ranked before on
        the same model and calibration with ``target``'s quantizer settings wrote the same int8 files (ONNX
        Runtime's and OpenVINO's U8S8); its ranking is reused when its runtime also computes them alike here:
        ``int8_logits`` (``target``'s, all int8, on the tune split) differ from its own by at most RUNTIME_ALIKE of
        the int8 error (mean KL). Where it saturates its int8 sums (OpenVINO on a CPU without VNNI), it does not."""
        for path, cal, quant, on, logits, ranked in self._rankings:
            if path == str(fp32_path) and cal is calib and quant == target.quant and \
                    mean_kl(logits, int8_logits) <= RUNTIME_ALIKE * mean_kl(self.tune.ref_logits, logits):
                log.info("%s: layers ranked by sensitivity on %s (the same int8 files, computed alike)", target.name,
                         on)
                return ranked, on
        ranked = sensitivity(fp32_path, calib, target, self.tune.sens_x, self.workdir, self.show_progress)
        self._rankings.append((str(fp32_path), calib, dict(target.quant), target.name, int8_logits, ranked))
        return ranked, target.name

    def _judge(self, path: Path, target, layers: int) -> Dict:
        """The int8 file at ``path`` (``layers`` kept in float) on the tune split: top-1/top-5, agreement, whether
        within budget, and, when the agreement is short, the share of its logit error that would have to go
        (``error_scale_needed``: the refusal says how far off the floor is, not only that it was missed)."""
        return self._score(onnx_logits(path, self.tune.inputs(), target=target), layers)

    def _score(self, logits: np.ndarray, layers: int) -> Dict:
        acc, agree = self.tune.judge(logits)
        t = {"layers": layers, "top1": acc["top1"], "top5": acc["top5"], "agreement": agree,
             "within_budget": self.budget.within(self.tune.ref_top1, acc["top1"], agree)}
        by_source = self.tune.by_source(logits, self.budget.min_agreement)
        if by_source:
            t["agreement_by_source"] = by_source
        if agree < self.budget.min_agreement:
            t["error_scale_needed"] = error_scale_needed(self.tune.ref_logits, logits, self.budget.min_agreement)
            t["changes"] = class_changes(changed_confidences(self.tune.ref_logits, logits))
        return t

    def _missed(self, target, t: Dict, floats: str) -> str:
        drop = (self.tune.ref_top1 - t["top1"]) * 100
        side = f"{drop:.2f} points below" if drop >= 0 else f"{-drop:.2f} points above"
        why = (f"{target.name} int8 on the tune split: top-1 {t['top1']:.4f}, {side} fp32 "
               f"{self.tune.ref_top1:.4f}, agreement {t['agreement']:.1%}, {floats} (budget --max-drop "
               f"{self.budget.max_drop}, --min-agreement {self.budget.min_agreement})")
        if "error_scale_needed" in t:
            why += (f"; {self.budget.min_agreement * 100:g}% agreement on these images needs its logit error cut to "
                    f"{t['error_scale_needed']:.2f}x")
        if "changes" in t:
            why += f"; of the {len(self.tune)} tune images, {describe_changes(t['changes'])}"
        if "agreement_by_source" in t:
            why += "; by source: " + ", ".join(
                f"{k} {v['agreement']:.1%} of {v['images']}"
                + (f" (error to {v['error_scale_needed']:.2f}x)" if "error_scale_needed" in v else "")
                for k, v in t["agreement_by_source"].items())
        return why

    def run(self, fp32_path: str, calib: Calibration, target, out_path: Path,
            max_fallback: Optional[int] = None) -> GateResult:
        """Quantize ``fp32_path`` for ``target`` into ``out_path``, keeping at most ``max_fallback`` layers in float."""
        quantize(fp32_path, calib, out_path, target)
        logits = onnx_logits(out_path, self.tune.inputs(), target=target)
        ptq = self._score(logits, 0)
        res = GateResult(out_path.name, ptq["top1"], ptq["top5"], search=[ptq])
        log.info("%s int8 (%s): tune top-1 %.4f, drop %.2f points (budget %.2f), agreement %.3f (floor %.3f)",
                 target.name, calib.method, ptq["top1"], (self.tune.ref_top1 - ptq["top1"]) * 100,
                 self.budget.max_drop, ptq["agreement"], self.budget.min_agreement)
        if ptq["within_budget"]:
            return res
        if max_fallback == 0:
            res.passed, res.reason = False, self._missed(target, ptq, "with no layer in float")
            return res
        return self._fall_back(fp32_path, calib, target, out_path, res, max_fallback, logits)

    def _fall_back(self, fp32_path, calib, target, out_path: Path, res: GateResult, max_fallback,
                   int8_logits: np.ndarray) -> GateResult:
        """The fewest most-sensitive layers in float that bring the model within budget: first the most the
        fallback may keep (if even they miss, no smaller prefix is tried), then a galloping and bisecting search
        over the count, which takes the agreement as growing with each layer kept in float (a handful of trials
        where one layer at a time took dozens of quantize-and-measure rounds)."""
        ranked, res.ranked_on = self._ranking(fp32_path, calib, target, int8_logits)
        limit = max(1, int(len(ranked) * self.max_fallback_frac))
        limit = min(limit if max_fallback is None else min(limit, max_fallback), len(ranked))
        if limit == 0:
            res.passed, res.reason = False, self._missed(target, res.search[0], "and no layer to keep in float")
            return res
        nodes = [r["node"] for r in ranked[:limit]]
        trials: Dict[int, Dict] = {0: res.search[0]}  # by count, in the order tried (each count once)

        def trial(k: int) -> bool:
            trials[k] = self._trial(fp32_path, calib, target, out_path, nodes[:k])
            return trials[k]["within_budget"]

        passed, lo, hi = trial(limit), 0, limit
        k = 1
        while passed and k < hi:  # gallop: 1, 2, 4, ... floats until one is within budget
            lo, hi = (lo, k) if trial(k) else (k, hi)
            k *= 2
        while passed and hi - lo > 1:  # then bisect between the last count that missed and the first that passed
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if trial(mid) else (mid, hi)
        best = hi if passed else limit
        if next(reversed(trials)) != best:  # the file on disk is the last count tried's
            quantize(fp32_path, calib, out_path, target, exclude=nodes[:best])  # the file of the count chosen
        res.search = [trials[k] for k in sorted(trials)]
        res.fallback = [{"node": r["node"], "sensitivity_gain": r["gain"]} for r in ranked[:best]]
        res.top1, res.top5 = trials[best]["top1"], trials[best]["top5"]
        if not passed:
            res.passed = False
            res.reason = self._missed(target, trials[limit], f"even with {limit} layers in float (the most the "
                                      "fallback keeps)")
        return res

    def _trial(self, fp32_path, calib, target, out_path: Path, floats: List[str]) -> Dict:
        """Quantize with ``floats`` kept in float and measure it: tune top-1/top-5, agreement, batch-1 latency."""
        quantize(fp32_path, calib, out_path, target, exclude=floats)
        t = self._judge(out_path, target, len(floats))
        be = host_backend(out_path, target)
        try:
            one = np.ascontiguousarray(self.tune.x[:1])
            lat = measure_interleaved({"m": (lambda: be.infer(one))}, warmup=5, iters=50, rounds=1)["m"]["p50_ms"]
        finally:
            be.close()
        log.info("%d layer(s) in float -> tune top-1 %.4f, agreement %.3f, %.3f ms", len(floats), t["top1"],
                 t["agreement"], lat)
        return {**t, "latency_ms": lat}


def host_p50(candidates: Dict[str, str | os.PathLike], target, batch: np.ndarray) -> Dict[str, float]:
    """Batch-1 p50 in ms on this host of each candidate (label -> artefact file, all for ``target``), timed in
    interleaved rounds so that a slow spell of the machine falls on all of them."""
    res = speed_gate({k: (p, target) for k, p in candidates.items()}, batch, iters=100)
    return {k: v["p50_ms"] for k, v in res.items()}


def speed_gate(models: Dict[str, tuple], batch: np.ndarray, threads: int = 2, iters: int = 200,
               inputs: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, Dict]:
    """Batch-1 latency on this CPU, interleaved; ``models`` maps a label to ``(file, target or None[, precision])``,
    each run by the runtime that judges it here (``host_backend``), on ``batch``'s first image or, for a label in
    ``inputs``, on that one's (a model at another input size)."""
    one = {k: np.ascontiguousarray((inputs or {}).get(k, batch)[:1]) for k in models}
    backends = {}
    try:  # built inside the try: a SIGTERM while the third one compiles still closes the first two
        for k, m in models.items():
            backends[k] = host_backend(m[0], m[1], threads, *m[2:])
        fns = {k: (lambda be=be, x=one[k]: be.infer(x)) for k, be in backends.items()}
        # settle: one runtime's spinning worker threads must not slow the next candidate (tools/ort_tuning.py)
        return measure_interleaved(fns, warmup=20, iters=iters, rounds=10, settle_s=0.02)
    finally:
        for be in backends.values():
            be.close()
