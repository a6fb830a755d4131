"""How long the int8 fallback search's per-layer sensitivity ranking takes per layer, with ONNX Runtime computing every
weight's per-channel scales itself on each quantization (its own way) and with edgecv handing back the scales it
computed once (``edgecv.export.quantize.weight_scale_overrides``), timed in one interleaved run on EfficientNet-Lite0.

    python tools/bench_ranking.py [--layers 12] [--images 64] [--out DIR]

Each layer is one step of ``edgecv.export.gates.sensitivity``: quantize the model with that layer kept in float,
then run its int8 file on the ranking images (64 in the export). The two ways alternate layer by layer, so a
slower moment of the machine falls on both; the files each way writes are compared byte for byte. Writes
bench_ranking.md and .json.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "imagenet-samples"
sys.path.insert(0, str(ROOT))

WAYS = ("scales computed by ONNX Runtime", "scales reused")


def _photo_files(n: int) -> list:
    """The first ``n`` shared ImageNet photographs, or a usage error when there are fewer."""
    files = sorted(SHARED.rglob("*.JPEG"))[:n]
    if len(files) < n:
        raise SystemExit(f"{SHARED}: {len(files)} photographs, {n} needed (--images)")
    return files


def _photos(files: list) -> np.ndarray:
    from weight_rounding import lite0_spec

    from edgecv.runtime.preprocess import Preprocessor, load_image

    pre = Preprocessor(lite0_spec())  # the preprocessing its weights came with
    return np.stack([pre(load_image(str(f), 3)) for f in files])


def _one_layer(fp32: Path, calib, target, node: str, x: np.ndarray, out: Path) -> Dict[str, float]:
    from edgecv.export.gates import onnx_logits
    from edgecv.export.quantize import quantize

    t0 = time.perf_counter()
    quantize(fp32, calib, out, target, exclude=[node])
    t1 = time.perf_counter()
    onnx_logits(out, x, target=target)
    return {"quantize": t1 - t0, "step": time.perf_counter() - t0}


def measure(layers: int, files: list, work: Path) -> Dict:
    from edgecv import targets
    from edgecv.export.onnx_export import export_onnx
    from edgecv.export.quantize import calibrate, quantizable_nodes
    from edgecv.models import create_model

    fp32 = work / "lite0.onnx"
    export_onnx(create_model("efficientnet_lite0", pretrained=True).eval(), fp32, (3, 224, 224))
    x = _photos(files)
    calib = calibrate(fp32, x, "percentile")
    nodes = quantizable_nodes(fp32)
    picked = [nodes[i] for i in np.linspace(0, len(nodes) - 1, min(layers, len(nodes))).astype(int)]
    res: Dict = {"layers": len(picked), "of_layers": len(nodes), "images": len(files), "targets": {}}
    for name in ("tensorrt", "onnxruntime"):
        t = targets.get(name)
        own = dataclasses.replace(t, quant=dict(t.quant, TensorQuantOverrides={}))
        _one_layer(fp32, calib, t, picked[0], x, work / "warm.onnx")  # the first computes the scales once: not timed
        times = {w: [] for w in WAYS}
        for i, node in enumerate(picked):
            order = WAYS if i % 2 == 0 else WAYS[::-1]
            for way in order:
                times[way].append(_one_layer(fp32, calib, own if way == WAYS[0] else t, node, x, work / f"{way[:6]}.onnx"))
            a, b = ((work / f"{w[:6]}.onnx").read_bytes() for w in WAYS)
            if a != b:
                raise SystemExit(f"{name}, {node}: the two ways wrote different files")
            print(f"{name} {i + 1}/{len(picked)} {node}", flush=True)
        res["targets"][name] = {w: {k: float(np.median([r[k] for r in times[w]])) for k in ("quantize", "step")}
                                for w in WAYS}
    return res


def markdown(res: Dict) -> str:
    lines = [f"Median seconds per layer over {res['layers']} of Lite0's {res['of_layers']} weighted layers, ranking on "
             f"{res['images']} photographs; the files of both ways identical byte for byte.", "",
             "| target | way | quantize | quantize + run | step vs ONNX Runtime's own |", "|---|---|---|---|---|"]
    for name, per in res["targets"].items():
        base = per[WAYS[0]]["step"]
        for w in WAYS:
            r = per[w]
            lines.append(f"| {name} | {w} | {r['quantize']:.2f} | {r['step']:.2f} | {r['step'] / base:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12, help="layers timed, spread over the network (default 12)")
    ap.add_argument("--images", type=int, default=64, help="ranking images, also the calibration (default 64)")
    ap.add_argument("--out", default="out/bench_ranking")
    a = ap.parse_args(argv)
    if a.layers < 1 or a.images < 1:
        ap.error("--layers and --images must be at least 1")
    from edgecv.utils.io import atomic_write_json, atomic_write_text
    from edgecv.utils.signals import INTERRUPTS, exit_code, install

    files = _photo_files(a.images)
    out = Path(a.out)
    try:  # before minutes of work, not after
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        ap.error(f"--out {out}: {e.strerror}")
    install()  # SIGTERM as an exception: the temporary folder of ONNX files is removed on the way out
    try:
        with tempfile.TemporaryDirectory(prefix="edgecv-bench-ranking-") as tmp:
            res = measure(a.layers, files, Path(tmp))
    except INTERRUPTS as e:
        print("interrupted", file=sys.stderr)
        return exit_code(e)
    atomic_write_json(out / "bench_ranking.json", res)
    md = markdown(res)
    atomic_write_text(out / "bench_ranking.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
