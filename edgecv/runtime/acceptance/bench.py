"""``edgecv bench``: latency percentiles and throughput per batch size, after warm-up."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

import numpy as np

from edgecv.runtime.latency import measure_interleaved
from edgecv.utils.progress import progress


@dataclass
class BenchOptions:
    """``edgecv bench``'s options: the batch sizes, untimed ``warmup`` and timed ``iters`` runs per batch, the
    artefact's precision (None: the manifest's choice), ONNX Runtime's threads, the DLA core (-1: the GPU), and the
    input's dimensions after the batch where the model leaves them dynamic (``shape``)."""

    batches: Tuple[int, ...] = (1,)
    warmup: int = 20
    iters: int = 200
    precision: Optional[str] = None
    threads: Optional[int] = None
    dla_core: int = -1
    shape: Optional[Tuple[int, ...]] = None
    show_progress: bool = True  # a bar per batch size over its warm-up and timed runs (outside the timed interval)


def runs_on(be, x: np.ndarray, artifact: str) -> None:
    """One inference of ``x``; InputSpecError naming ``artifact`` and the shape when the runtime cannot run it (a
    --shape too small for the network's kernels was ONNX Runtime's or OpenVINO's traceback)."""
    from edgecv.errors import InputSpecError

    try:
        be.infer(x)
    except Exception as e:  # each runtime raises its own class, with a message of several lines
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # OpenVINO's first lines only say where it was thrown ("Exception from src/...cpp:224:")
        first = next((t for t in lines if not t.startswith("Exception from")), lines[0] if lines else type(e).__name__)
        raise InputSpecError(f"{artifact}: cannot run on an input of shape {'x'.join(map(str, x.shape))} "
                             f"({first[:300]})") from None


def random_input(be, batch: int, shape: Optional[Tuple[int, ...]], artifact: str) -> np.ndarray:
    """A random batch of ``batch`` inputs for ``be`` (``shape``: the dimensions the model leaves dynamic), run once
    (``runs_on``, which names ``artifact`` when it cannot run)."""
    x = np.random.default_rng(0).standard_normal(be.inputs[0].batch_shape(batch, shape), dtype=np.float32)
    runs_on(be, x, artifact)
    return x


def bench(target: str, backend: str = "auto", options: Optional[BenchOptions] = None, **fields) -> Dict:
    """Time ``infer`` on random inputs of the model's shape; one entry per batch size. Options come as a
    :class:`BenchOptions`, or as its fields by name."""
    from edgecv.runtime.backends.select import open_backend

    o = replace(options or BenchOptions(), **fields)
    be, info = open_backend(target, backend, o.precision, o.threads, dla_core=o.dla_core)
    out = {"backend": info["backend"], "artifact": info["file"], "precision": info["precision"], "batches": {}}
    try:
        for b in o.batches:
            x = random_input(be, b, o.shape, info["file"])
            with progress(desc=f"bench batch {b}", total=o.warmup + o.iters, show=o.show_progress) as bar:
                stats = measure_interleaved({"m": lambda x=x: be.infer(x)}, warmup=o.warmup, iters=o.iters, rounds=1,
                                            tick=bar.update)["m"]
            stats["throughput"] = b * 1000.0 / stats["mean_ms"]
            out["batches"][str(b)] = stats
    finally:
        be.close()
    return out
