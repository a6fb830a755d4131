"""Latency measurement shared by `edgecv bench`, the export speed gate and the benchmarks in tools/.

Several candidates are measured in interleaved rounds, so load from other processes shows up in all of
them rather than biasing whichever ran during the disturbance.
"""
from __future__ import annotations

import time
from typing import Callable, Dict

import numpy as np


def percentiles(samples_ms) -> Dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a.min()),
            "iters": int(a.size)}


def measure_interleaved(fns: Dict[str, Callable[[], object]], warmup: int = 10, iters: int = 100,
                        rounds: int = 10, settle_s: float = 0.0) -> Dict[str, Dict[str, float]]:
    """Time each zero-argument callable ``iters`` times, alternating between them in ``rounds`` blocks.

    ``settle_s``: a pause before each block, so the previous candidate's spinning worker threads (ONNX Runtime's
    pools spin after a run) have gone idle and do not slow the next one: without it, whichever candidate follows
    a spinning pool looks slower."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in fns}
    per_round = max(1, iters // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            if settle_s:
                time.sleep(settle_s)
                fn()  # one untimed run: caches and threads back up after the pause
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {k: percentiles(v) for k, v in samples.items()}
