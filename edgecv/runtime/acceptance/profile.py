"""``edgecv profile``: per-layer latency (ONNX Runtime profiler per node; TensorRT IProfiler).

Writes a table sorted by time, trtexec ``--exportProfile``-shaped JSON, CSV, and a bar chart PNG of
the top layers. Layer names from edgecv's exporter (``/features/features.3/features.3.0/Conv``) map
back to the PyTorch module (``features.3.0``).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from edgecv.runtime.latency import measure_interleaved
from edgecv.utils.images import write_png
from edgecv.utils.io import atomic_path, atomic_write_json
from edgecv.utils.outputs import output_folder

TOLERANCE = 0.10


_FIRST_NODE = re.compile(r"/[^\s,()+]+")


def torch_module_of(layer: str) -> Optional[str]:
    """The PyTorch module path of an exported node name, or None.

    ``/features/features.3/features.3.0/Conv`` -> ``features.3.0`` (a Sequential's children repeat its name:
    ``/features/features.1/conv/conv.0/Conv`` -> ``features.1.conv.0``);
    ``/_blocks.0/_depthwise_conv/Conv_token_7`` -> ``_blocks.0._depthwise_conv`` (attribute scopes do not).
    TensorRT's fused layers (``/a/Conv + /a/Relu``, ``PWN(/b/Sigmoid, /b/Mul)``, ``Reformatting CopyNode for
    Input Tensor 0 to /c/Conv``) map to the module of the first ONNX node they name.
    """
    m = _FIRST_NODE.search(layer)
    if m is None:
        return None
    parts = [p for p in m.group().split("/") if p]
    if len(parts) < 2:
        return None
    path: List[str] = []
    for comp in parts[:-1]:
        names = comp.split(".")
        # the longest tail of the path the component starts with is the scope it repeats
        k = next((k for k in range(min(len(path), len(names)), 0, -1) if names[:k] == path[-k:]), 0)
        path = path[:len(path) - k] + names
    return ".".join(path)


@dataclass
class ProfileOptions:
    """``edgecv profile``'s options: batch, timed iterations after ``warmup``, the engine's threads or DLA core, and
    the ``top`` layers charted into ``out_dir`` (profile.json in trtexec's shape, profile.csv, profile.png)."""

    iters: int = 100
    warmup: int = 10
    batch: int = 1
    threads: Optional[int] = None
    dla_core: int = -1
    shape: Optional[Tuple[int, ...]] = None  # the input's dimensions after the batch, where the model leaves them dynamic
    out_dir: Optional[str] = None
    top: int = 20


def profile(target: str, backend: str = "auto", options: Optional[ProfileOptions] = None, **fields) -> Dict:
    """Per-layer mean and median ms of TARGET's default artefact on ``backend``, with the end-to-end check.
    Options come as a :class:`ProfileOptions`, or as its fields by name."""
    from edgecv.bundle.reader import is_bundle_dir, open_bundle
    from edgecv.runtime.acceptance.bench import random_input
    from edgecv.runtime.backends.select import open_backend

    o = replace(options or ProfileOptions(), **fields)
    if is_bundle_dir(target):
        target = open_bundle(target)  # opened and checksummed once
    be, info = open_backend(target, backend, threads=o.threads, dla_core=o.dla_core)
    try:
        x = random_input(be, o.batch, o.shape, info["file"])
        for _ in range(o.warmup):
            be.infer(x)
        prof = be.profile_layers(x, o.iters)
        plain = measure_interleaved({"m": lambda: be.infer(x)}, warmup=o.warmup, iters=o.iters, rounds=1)["m"]
    finally:
        be.close()
    res = _layer_table(prof, plain["mean_ms"])
    res.update(backend=info["backend"], artifact=info["file"], batch=o.batch, iters=o.iters)
    if o.out_dir:
        write_outputs(res, Path(o.out_dir), o.top)
        for name, text in prof.get("files", {}).items():
            with atomic_path(Path(o.out_dir) / name) as t:
                Path(t).write_text(text)
    return res


def _layer_table(prof: Dict, plain: float) -> Dict:
    """The layers sorted by time, and whether their sum matches the end-to-end time.

    Where the profiler times each run end to end in the same trace, the check takes the median over runs of
    (that run's layers summed / that run's time): the same profiler overhead on both sides, and a run in which the
    OS preempted the process between two layers (on a busy 2-core machine, a quarter of that run unaccounted for)
    is one outlier, not a shift of the mean. Else it compares the mean sum with the unprofiled latency, which is
    reported either way."""
    e2e = prof["run_ms"] or plain
    layers = {k: (float(np.mean(v)), float(np.median(v))) for k, v in prof["layers"].items() if len(v)}
    total = sum(mean for mean, _ in layers.values())
    rows = sorted(({"name": k, "op": prof["ops"].get(k, ""), "averageMs": mean, "medianMs": med,
                    "percentage": 100 * mean / total if total else 0, "torch_module": torch_module_of(k)}
                   for k, (mean, med) in layers.items()), key=lambda r: -r["averageMs"])
    pairs = [(s, r) for s, r in prof.get("run_pairs") or () if r > 0]
    if pairs:
        ratio = float(np.median([s / r for s, r in pairs]))
    else:
        ratio = total / e2e if e2e else None
    return {"layers": rows, "sum_layers_ms": total, "end_to_end_ms": e2e, "unprofiled_ms": plain, "sum_ratio": ratio,
            "sum_within_tolerance": ratio is not None and abs(1 - ratio) <= TOLERANCE}


def trtexec_json(res: Dict) -> List[Dict]:
    """The shape of ``trtexec --exportProfile``: a count record, then one record per layer."""
    out: List[Dict] = [{"count": res["iters"]}]
    for r in res["layers"]:
        out.append({"name": r["name"], "timeMs": r["averageMs"] * res["iters"], "averageMs": r["averageMs"],
                    "medianMs": r["medianMs"], "percentage": r["percentage"]})
    return out


def write_outputs(res: Dict, out: Path, top: int = 20) -> None:
    out = output_folder(out)
    atomic_write_json(out / "profile.json", trtexec_json(res))
    with atomic_path(out / "profile.csv") as t:
        with open(t, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "op", "torch_module", "average_ms", "percentage"])
            for r in res["layers"]:
                w.writerow([r["name"], r["op"], r["torch_module"] or "", f"{r['averageMs']:.6f}", f"{r['percentage']:.3f}"])
    write_bar_png(res, out / "profile.png", top)


def write_bar_png(res: Dict, path: Path, top: int = 20) -> None:
    """Horizontal bar chart of the top layers, drawn with OpenCV (the device has no matplotlib)."""
    import cv2

    rows = res["layers"][:top]
    w, bar_x, row_h = 1000, 430, 22
    img = np.full((60 + row_h * max(1, len(rows)), w, 3), 255, np.uint8)
    title = (f"top {len(rows)} layers ({res['backend']}): sum {res['sum_layers_ms']:.3f} ms, "
             f"end-to-end {res['end_to_end_ms']:.3f} ms")
    cv2.putText(img, title, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    peak = max((r["averageMs"] for r in rows), default=1.0) or 1.0
    for i, r in enumerate(rows):
        y = 44 + i * row_h
        label = (r["torch_module"] or r["name"])[-38:] + (f" {r['op']}" if r["op"] else "")
        cv2.putText(img, label[:52], (10, y + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        length = int((w - bar_x - 140) * r["averageMs"] / peak)
        cv2.rectangle(img, (bar_x, y + 3), (bar_x + max(1, length), y + row_h - 3), (180, 110, 40), -1)
        cv2.putText(img, f"{r['averageMs']:.3f} ms {r['percentage']:.1f}%", (bar_x + length + 6, y + 14),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    write_png(path, img)
