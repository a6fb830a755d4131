"""How right int8 is on this CPU: EfficientNet-Lite0's U8S8 int8 (the CPU artefact edgecv exports) against its fp32,
on ImageNet photographs the calibration never saw, per way of running it, timed in one interleaved run.

    python tools/int8_saturation.py [--images 100] [--iters 200] [--out DIR]

An x86 CPU without VNNI (AVX2 or AVX-512 alone) multiplies u8 x s8 pairs and adds each two products in 16 bits
(``vpmaddubsw``), which saturate; VNNI (``vpdpbusd``) and AMX add in 32 bits. Rows:
- onnxruntime, its defaults: what edgecv ran before it set ``session.x64quantprecision``;
- onnxruntime, edgecv's session options: ``x64quantprecision`` on (products widened where a weight lies outside
  [-64, 63]) where the CPU has no VNNI or AMX, ONNX Runtime's defaults where it has;
- onnxruntime, products widened: ``x64quantprecision`` on whatever the CPU (on a CPU with VNNI: what it costs);
- onnxruntime, no graph optimisation: every Q/DQ pair run as written, in float: the exact int8 arithmetic, the
  reference for the two above;
- openvino: edgecv's OpenVINO target on the same file;
- the same three ways again on two files whose weights are 7-bit ([-64, 64], ONNX Runtime's ``reduce_range``), so
  that no pair of products can saturate: the stem's weights only (NNCF's default ``overflow_fix``), and every
  layer's. "exact" there is what a CPU with VNNI would answer for those files;
- fp32: the baseline every ratio is taken against.
Agreement is top-1 with fp32; KL is the mean KL divergence of the softmax from fp32's. Writes int8_saturation.md
and .json.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "imagenet-samples"
sys.path.insert(0, str(ROOT))

from weight_rounding import lite0_spec  # noqa: E402


def cpu_int8_flags() -> str:
    """The x86 int8 dot-product instructions this CPU reports (/proc/cpuinfo), or what it lacks."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    have = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in flags]
    return ", ".join(have) if have else "no VNNI or AMX (" + ("AVX-512" if " avx512f" in flags else "AVX2") + " only)"


def _photos(n: int):
    from edgecv.runtime.preprocess import Preprocessor, load_image

    pre = Preprocessor(lite0_spec())
    files = sorted(SHARED.rglob("*.JPEG"))
    if len(files) < 2 * n:
        raise SystemExit(f"{SHARED}: {len(files)} photographs, {2 * n} needed (--images)")
    x = np.stack([pre(load_image(str(f), 3)) for f in files[: 2 * n]])
    return x[:n], x[n:]  # calibrate on the first half, judge on the second


def seven_bit(fp32: Path, calib, out: Path, first_only: bool) -> Path:
    """``fp32`` quantized as the ONNX Runtime target is, but with 7-bit weights on the stem (``first_only``) or on
    every layer: ONNX Runtime's per-tensor ``reduce_range`` override, added to the target's quantizer settings."""
    import dataclasses

    import onnx

    from edgecv import targets
    from edgecv.export.quantize import quantize

    weighted = [n.input[1] for n in onnx.load(str(fp32)).graph.node if n.op_type in ("Conv", "Gemm")]
    overrides = {w: [{"axis": 0, "reduce_range": True}] for w in weighted[: 1 if first_only else None]}
    ort_target = targets.get("onnxruntime")
    quantize(fp32, calib, out, dataclasses.replace(ort_target, quant={**ort_target.quant,
                                                                      "TensorQuantOverrides": overrides}))
    return out


def _runners(fp32: Path, int8: Path) -> Dict[str, Callable[[np.ndarray], np.ndarray]]:
    import onnxruntime as ort

    from edgecv.runtime.backends.openvino import OpenVinoBackend
    from edgecv.runtime.backends.ort import DISABLED_OPTIMIZERS, X64_QUANT_PRECISION, OrtBackend, session_options

    def run_with(so):
        s = ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=DISABLED_OPTIMIZERS)
        return lambda x: s.run(None, {s.get_inputs()[0].name: x})[0]

    def plain(level):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.graph_optimization_level = 2, level
        return run_with(so)

    def widened():
        so = session_options(2)
        so.add_session_config_entry(*X64_QUANT_PRECISION)
        return run_with(so)

    edge, ov, ref = OrtBackend(str(int8), threads=2), OpenVinoBackend(str(int8), threads=2), OrtBackend(str(fp32), threads=2)
    return {"onnxruntime, its defaults": plain(ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
            "onnxruntime, edgecv's options": edge.infer, "onnxruntime, products widened": widened(),
            "onnxruntime, exact (no optimisation)": plain(ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
            "openvino": ov.infer, "fp32": ref.infer}


def measure(n: int, iters: int, work: Path) -> Dict:
    from edgecv.export.onnx_export import export_onnx
    from edgecv.export.quantize import calibrate, quantize
    from edgecv.metrics import agreement, mean_kl
    from edgecv.models import create_model
    from edgecv.runtime.latency import measure_interleaved

    cal, held = _photos(n)
    fp32, int8 = work / "lite0.onnx", work / "lite0_int8_ort.onnx"
    export_onnx(create_model("efficientnet_lite0", pretrained=True).eval(), fp32, (3, 224, 224))
    calib = calibrate(fp32, cal, "minmax", bias_correction=False)
    quantize(fp32, calib, int8, "onnxruntime")
    runs = _runners(fp32, int8)
    for tag, first_only in (("7-bit stem", True), ("7-bit all", False)):
        more = _runners(fp32, seven_bit(fp32, calib, work / f"lite0_{tag.replace(' ', '_')}.onnx", first_only))
        runs.update({f"{tag}: {k}": f for k, f in more.items()
                     if k not in ("fp32", "onnxruntime, its defaults", "onnxruntime, products widened")})
    runs["fp32"] = runs.pop("fp32")
    logits = {k: np.concatenate([f(held[i: i + 20]) for i in range(0, len(held), 20)]) for k, f in runs.items()}
    one = held[:1]
    timed = {k: f for k, f in runs.items() if "exact" not in k}  # the exact runs are references, 4x slower
    times = measure_interleaved({k: (lambda f=f: f(one)) for k, f in timed.items()}, warmup=20, iters=iters)
    base = times["fp32"]["p50_ms"]
    rows = [{"run": k, "agreement": agreement(logits["fp32"], y), "mean_kl": mean_kl(logits["fp32"], y),
             "p50_ms": times[k]["p50_ms"] if k in times else None,
             "speed_vs_fp32": base / times[k]["p50_ms"] if k in times else None} for k, y in logits.items()]
    return {"cpu_int8": cpu_int8_flags(), "images": len(held), "rows": rows}


def markdown(res: Dict) -> str:
    lines = [f"CPU int8 instructions: {res['cpu_int8']}; {res['images']} held-out ImageNet photographs.", "",
             "| run | agreement with fp32 | mean KL | p50 batch 1 | speed vs fp32 |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        speed = ("not timed", "reference") if r["p50_ms"] is None else (f"{r['p50_ms']:.2f} ms",
                                                                        f"{r['speed_vs_fp32']:.2f}x")
        lines.append(f"| {r['run']} | {100 * r['agreement']:.1f}% | {r['mean_kl']:.4f} | {speed[0]} | {speed[1]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=100, help="calibrate on N photographs, judge on N others")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("."))
    a = ap.parse_args(argv)
    from edgecv.utils.io import atomic_write_json, atomic_write_text

    with tempfile.TemporaryDirectory(prefix="edgecv-sat-") as tmp:
        res = measure(a.images, a.iters, Path(tmp))
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out / "int8_saturation.json", res)
    atomic_write_text(a.out / "int8_saturation.md", markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
