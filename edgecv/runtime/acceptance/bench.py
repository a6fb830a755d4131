"""``edgecv bench``: latency percentiles and throughput per batch size, after warm-up."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from edgecv.runtime.latency import measure_interleaved


def bench(target: str, backend: str = "auto", batches: List[int] = (1,), warmup: int = 20, iters: int = 200,
          precision: Optional[str] = None, threads: Optional[int] = None, dla_core: int = -1) -> Dict:
    """Time ``infer`` on random inputs of the model's shape; one entry per batch size."""
    from edgecv.runtime.backends.select import open_backend

    be, info = open_backend(target, backend, precision, threads, dla_core=dla_core)
    spec = be.inputs[0]
    rng = np.random.default_rng(0)
    out = {"backend": info["backend"], "artifact": info["file"], "precision": info["precision"], "batches": {}}
    try:
        for b in batches:
            x = rng.standard_normal((b,) + tuple(d for d in spec.shape[1:])).astype(np.float32)
            stats = measure_interleaved({"m": lambda x=x: be.infer(x)}, warmup=warmup, iters=iters, rounds=1)["m"]
            stats["throughput"] = b * 1000.0 / stats["mean_ms"]
            out["batches"][str(b)] = stats
    finally:
        be.close()
    return out
