"""Which ONNX Runtime settings make edgecv's int8 CPU artefact faster here: each candidate against the current
settings, interleaved in one run (ratios, not absolute numbers, are the result).

    python tools/ort_tuning.py [--models efficientnet_lite0,resnet18,mobilenet_v2] [--iters 600] [--out DIR]

Candidates (each alone on top of edgecv's session options: ORT_ENABLE_ALL, intra-op threads 2, inter-op 1):
- spin off: ``session.intra_op.allow_spinning=0`` (threads sleep between runs: less CPU, usually slower);
- denormals as zero: ``session.set_denormal_as_zero=1``;
- extended only: ``ORT_ENABLE_EXTENDED`` (no NCHWc layout transform);
- saved optimised model: the graph ORT optimised, written once and loaded with optimisations off (start-up
  time is the point; latency must not change);
- QOperator format: QLinearConv/QLinearMatMul operators instead of Q/DQ pairs;
- convolutions only: Q/DQ on Conv/Gemm/MatMul only (the rest of the graph stays float).
Writes ort_tuning.md and ort_tuning.json; a setting is worth keeping only where every model gains.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "imagenet-samples"
sys.path.insert(0, str(ROOT))

from weight_rounding import lite0_spec  # noqa: E402

from edgecv.runtime.latency import measure_interleaved  # noqa: E402


def session(path: str, threads: int, tweak: Dict):
    import onnxruntime as ort

    from edgecv.runtime.backends.ort import DISABLED_OPTIMIZERS, session_options

    so = session_options(threads)
    for k, v in tweak.get("config", {}).items():
        so.add_session_config_entry(k, v)
    if "level" in tweak:
        so.graph_optimization_level = tweak["level"]
    if "save_to" in tweak:
        so.optimized_model_filepath = tweak["save_to"]
    t0 = time.perf_counter()
    s = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=DISABLED_OPTIMIZERS)
    return s, (time.perf_counter() - t0) * 1e3


def variants(name: str, work: Path, calib: np.ndarray, threads: int) -> Dict[str, Dict]:
    """Model file and session tweak per candidate (the baseline is edgecv's ONNX Runtime artefact)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgecv import targets
    from edgecv.export.onnx_export import export_onnx
    from edgecv.export.quantize import QUANT_OPS, calibrate, quantize
    from edgecv.models import create_model

    fp32 = work / f"{name}.onnx"
    export_onnx(create_model(name, pretrained=name == "efficientnet_lite0").eval(), fp32, (3, 224, 224))
    cal = calibrate(fp32, calib, "minmax")
    base = work / f"{name}_int8.onnx"
    quantize(fp32, cal, base, targets.get("onnxruntime"))
    saved = work / f"{name}_int8_optimised.onnx"
    session(str(base), threads, {"save_to": str(saved)})

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib[i: i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    qop = work / f"{name}_int8_qoperator.onnx"
    quantize_static(str(fp32), str(qop), Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=QUANT_OPS,
                    extra_options={"WeightSymmetric": True})
    convs = work / f"{name}_int8_convs.onnx"
    quantize(fp32, cal, convs, targets.get("onnxruntime"), op_types=("Conv", "Gemm", "MatMul"))
    return {
        "edgecv (baseline)": {"file": base, "tweak": {}},
        "spin off": {"file": base, "tweak": {"config": {"session.intra_op.allow_spinning": "0"}}},
        "denormals as zero": {"file": base, "tweak": {"config": {"session.set_denormal_as_zero": "1"}}},
        "extended only": {"file": base, "tweak": {"level": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}},
        "saved optimised model": {"file": saved, "tweak": {"level": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}},
        "QOperator format": {"file": qop, "tweak": {}},
        "convolutions only": {"file": convs, "tweak": {}},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientnet_lite0,resnet18,mobilenet_v2")
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="out/ort_tuning")
    a = ap.parse_args(argv)
    from edgecv.export.data import calib_and_eval_sets
    from edgecv.train.sources import data_config_from_spec

    lite = lite0_spec()
    cal, ev = calib_and_eval_sets(data_config_from_spec(lite), str(SHARED), str(SHARED), 64, 100, show_progress=False)
    one = np.ascontiguousarray(ev.x[:1])
    results = []
    with tempfile.TemporaryDirectory(prefix="edgecv-ort-tuning-") as tmp:
        for name in [m.strip() for m in a.models.split(",") if m.strip()]:
            print(f"[ort_tuning] {name} ...", flush=True)
            vs = variants(name, Path(tmp), cal.x, a.threads)
            sessions, load_ms = {}, {}
            for k, v in vs.items():
                sessions[k], load_ms[k] = session(str(v["file"]), a.threads, v["tweak"])
            ref = sessions["edgecv (baseline)"].run(None, {"input": ev.x})[0].argmax(1)
            lat = measure_interleaved({k: (lambda s=s: s.run(None, {"input": one})) for k, s in sessions.items()},
                                      warmup=20, iters=a.iters, rounds=20, settle_s=0.05)
            base = lat["edgecv (baseline)"]["p50_ms"]
            for k, s in sessions.items():
                agree = float((s.run(None, {"input": ev.x})[0].argmax(1) == ref).mean())
                results.append({"model": name, "variant": k, "p50_ms": lat[k]["p50_ms"], "p99_ms": lat[k]["p99_ms"],
                                "speedup": base / lat[k]["p50_ms"], "load_ms": load_ms[k],
                                "agreement_with_baseline": agree})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ort_tuning.json").write_text(json.dumps(results, indent=2))
    lines = ["| model | variant | p50 ms | p99 ms | speed-up vs edgecv | session load ms | top-1 agreement with edgecv's |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['variant']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['speedup']:.3f}x | "
              f"{r['load_ms']:.0f} | {r['agreement_with_baseline']:.1%} |" for r in results]
    (out / "ort_tuning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
