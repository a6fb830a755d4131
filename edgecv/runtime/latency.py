"""Latency measurement shared by `edgecv bench`, the export speed gate and the benchmarks in tools/.

Several candidates are measured in interleaved rounds, so load from other processes shows up in all of
them rather than biasing whichever ran during the disturbance.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional

import numpy as np


def percentiles(samples_ms) -> Dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a.min()),
            "iters": int(a.size)}


def measure_interleaved(fns: Dict[str, Callable[[], object]], warmup: int = 10, iters: int = 100,
                        rounds: int = 10, settle_s: float = 0.0,
                        tick: Optional[Callable[[], object]] = None) -> Dict[str, Dict[str, float]]:
    """Time each zero-argument callable ``iters`` times, alternating between them in ``rounds`` blocks.

    ``settle_s``: a pause before each block, so the previous candidate's spinning worker threads (ONNX Runtime's
    pools spin after a run) have gone idle and do not slow the next one: without it, whichever candidate follows
    a spinning pool looks slower. ``tick``: called after every run, warm-up or timed, outside the timed interval
    (a progress bar's update)."""
    tick = tick or (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
            tick()
    samples = {k: [] for k in fns}
    per_round = max(1, iters // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            if settle_s:
                time.sleep(settle_s)
                fn()  # one untimed run: caches and threads back up after the pause
            block = []
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                block.append((time.perf_counter() - t0) * 1e3)
                tick()
            samples[name].append(block)
    return {k: {**percentiles(np.concatenate(v)), "round_p50_ms": [float(np.median(b)) for b in v]}
            for k, v in samples.items()}


def ratio_interval(base_rounds, cand_rounds, confidence: float = 0.95, n_boot: int = 4000,
                   seed: int = 0) -> Dict[str, float]:
    """How many times faster ``cand`` is than ``base`` (>1: faster), with a bootstrap confidence interval.

    Both lists hold per-round medians from one interleaved measurement, round i of each taken moments apart, so
    the ratio is formed per round (what the machine's drift does to both cancels) and the rounds are resampled
    with replacement; the estimate is the geometric mean of the per-round ratios."""
    b, c = np.asarray(base_rounds, dtype=np.float64), np.asarray(cand_rounds, dtype=np.float64)
    if b.shape != c.shape or b.size == 0:
        raise ValueError(f"need paired rounds, got {b.size} and {c.size}")
    logs = np.log(b / c)
    rng = np.random.default_rng(seed)
    boot = logs[rng.integers(0, logs.size, size=(n_boot, logs.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    return {"ratio": float(np.exp(logs.mean())), "lo": float(np.exp(np.percentile(boot, tail))),
            "hi": float(np.exp(np.percentile(boot, 100 - tail))), "rounds": int(logs.size), "confidence": confidence}


PARITY_BAND = 0.05


def speed_verdict(lo: float, hi: float, band: float = PARITY_BAND) -> str:
    """``ahead``, ``parity`` or ``behind`` only when the whole interval of the speed ratio says so: ahead (behind)
    when all of it lies beyond ``band`` faster (slower), parity when all of it lies within ``band`` of 1.0.
    An interval across a boundary names both sides ("parity or ahead"): the measurement cannot tell them apart."""
    names = ["behind", "parity", "ahead"]

    def side(v: float) -> int:
        return 0 if v < 1 / (1 + band) else 2 if v > 1 + band else 1

    span = names[side(min(lo, hi)):side(max(lo, hi)) + 1]
    return span[0] if len(span) == 1 else ", ".join(span[:-1]) + " or " + span[-1]


def drift(rounds) -> float:
    """How much one candidate's per-round median moved during a measurement: slowest round over fastest, minus 1
    (0.10: the machine was 10% slower at its worst than at its best)."""
    r = np.asarray(rounds, dtype=np.float64)
    return float(r.max() / r.min() - 1) if r.size else 0.0
