"""``edgecv verify``: on the device, every precision it can run answers the golden vectors like fp32 did.

For each target that can run here (highest priority first) and each precision its backend offers for the
bundle, verify builds or loads it, runs the bundle's golden vectors, and measures top-1 agreement with the
fp32 logits computed at export, the largest and mean logit error, accuracy on the golden labels, and batch-1
latency p50/p99 on this device. A precision passes when it stays within the fidelity budget written into the
manifest at export (agreement and top-1 drop). The fastest passing one is chosen and recorded per device
(beside the engine cache); ``run``, ``bench``, ``eval`` and ``profile`` then use it by default. A precision
that fails to build, to load or to meet the budget is never chosen, and the report says why.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

import numpy as np

from edgecv import targets
from edgecv.errors import USER_ERRORS, DeviceError
from edgecv.metrics import Budget, agreement, mean_kl, top1
from edgecv.runtime.choice import choice_dir_writable, record_choice
from edgecv.runtime.latency import measure_interleaved

log = logging.getLogger("edgecv.verify")


def _run_golden(be, x: np.ndarray) -> np.ndarray:
    step = min(32, getattr(be, "max_batch", None) or 32)
    return np.concatenate([be.infer(np.ascontiguousarray(x[i: i + step])) for i in range(0, len(x), step)])


def measure(be, x: np.ndarray, y: np.ndarray, ref: np.ndarray, iters: int) -> Dict:
    logits = _run_golden(be, x)
    if logits.shape != ref.shape or not np.isfinite(logits).all():
        return {"finite": False, "agreement": 0.0, "top1": 0.0, "max_abs_err": float("inf"),
                "mean_abs_err": float("inf"), "mean_kl": float("inf")}
    one = np.ascontiguousarray(x[:1])
    lat = measure_interleaved({"m": lambda: be.infer(one)}, warmup=min(10, iters), iters=iters, rounds=1)["m"]
    err = np.abs(logits.astype(np.float64) - ref)
    return {"finite": True, "agreement": agreement(ref, logits), "top1": top1(logits, y), "max_abs_err": float(err.max()),
            "mean_abs_err": float(err.mean()), "mean_kl": mean_kl(ref, logits),
            "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"]}


def _candidate(bundle, target, prec: str, golden, budget: Budget, opts: Dict) -> Dict:
    """One precision of one target against the golden vectors: its row (passed / failed, and why)."""
    from edgecv.runtime.backends.select import open_backend

    x, y, ref, ref_top1 = golden
    row: Dict = {"target": target.name, "precision": prec}
    try:
        be, info = open_backend(bundle, target.name, prec, dla_core=opts["dla_core"])
    except (*USER_ERRORS(), DeviceError, RuntimeError, OSError) as e:
        return {**row, "status": "failed", "reason": f"could not build or load: {e}"}
    try:
        row.update(file=info["file"], **measure(be, x, y, ref, opts["iters"]))
    except (*USER_ERRORS(), DeviceError, RuntimeError) as e:
        return {**row, "status": "failed", "reason": f"inference failed: {e}"}
    finally:
        be.close()
    row["top1_drop"] = (ref_top1 - row["top1"]) * 100
    problems = ([] if row["finite"] else ["non-finite or misshaped logits"]) + \
        budget.problems(ref_top1, row["top1"], row["agreement"])
    row["status"], row["reason"] = ("failed" if problems else "passed"), "; ".join(problems)
    return row


def choose(rows: List[Dict]) -> Optional[Dict]:
    """The fastest row that passed (None: none did); every passing row's reason says why it was or was not chosen.
    A precision is never chosen for being compressed, only for being within the budget and faster."""
    passing = [r for r in rows if r["status"] == "passed"]
    chosen = min(passing, key=lambda r: r["p50_ms"]) if passing else None
    for r in passing:
        r["reason"] = "chosen: the fastest within the budget" if r is chosen else \
            f"within budget, slower ({r['p50_ms']:.3f} ms vs {chosen['p50_ms']:.3f} ms)"
    return chosen


def verify(bundle_dir, backend: str = "auto", iters: int = 50, record: bool = True, dla_core: int = -1) -> Dict:
    """Check every precision this device can run against the golden vectors; choose and record the fastest
    within the fidelity budget. Returns the report; ``chosen`` is None when no precision passes."""
    from edgecv.bundle.golden import load_golden
    from edgecv.bundle.reader import open_bundle

    bundle = open_bundle(bundle_dir)
    if record:
        choice_dir_writable(create=False)  # refused before the measuring, not after it
    x, y, ref = load_golden(bundle)
    budget = Budget.from_dict(bundle.manifest["golden"]["budget"])  # range-checked when the bundle was opened
    golden, opts = (x, y, ref, top1(ref, y)), {"iters": iters, "dla_core": dla_core}
    rows: List[Dict] = []
    for t in targets.auto_order() if backend == "auto" else [targets.get(backend)]:
        cls = t.backend_class()
        ok, why = cls.available()
        if not ok:
            rows.append({"target": t.name, "precision": "-", "status": "unavailable", "reason": why})
            continue
        rows += [_candidate(bundle, t, prec, golden, budget, opts) for prec in cls.precisions(bundle)]
    chosen = choose(rows)
    report = {"bundle": str(bundle.root), "manifest_sha256": bundle.manifest["manifest_sha256"],
              "golden": {"n": int(len(y)), "fp32_top1": golden[3]}, "budget": budget.to_dict(), "candidates": rows,
              "chosen": {**{k: chosen[k] for k in ("target", "precision", "file", "p50_ms", "agreement")},
                         "dla_core": dla_core} if chosen else None}
    if chosen and record:
        report["recorded"] = str(record_choice(bundle, report))
    return report
