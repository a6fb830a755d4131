"""edgecv's TensorRT-target Q/DQ placement against NVIDIA Model Optimizer's ONNX PTQ, on the same fp32 ONNX and
the same calibration images (EfficientNet-Lite0, the shared ImageNet images, the export's splits).

    python tools/modelopt_compare.py [--out DIR]

For each int8 model: where its activation Q/DQ pairs sit (counted by the op that produces the quantized tensor),
and its top-1 agreement with fp32 and top-1 on the tune and evaluation splits, run with ONNX Runtime (CPU).
ModelOpt is not an edgecv dependency. Its ``[onnx]`` extra pulls onnxruntime-gpu and cupy on x86, so install it
without them in a virtual environment that sees this one's packages:

    python -m venv --system-site-packages /tmp/mo
    /tmp/mo/bin/pip install --no-deps nvidia-modelopt nvidia-ml-py onnxslim lief   # imports it does not declare
    /tmp/mo/bin/python tools/modelopt_compare.py
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "imagenet-samples"
sys.path.insert(0, str(ROOT))

from weight_rounding import lite0_spec  # noqa: E402


def placement(path: Path) -> Dict[str, int]:
    """Activation QuantizeLinear nodes by the op type that produces their input (weights excluded)."""
    import onnx

    g = onnx.load(str(path)).graph
    inits = {i.name for i in g.initializer}
    prod = {o: n.op_type for n in g.node for o in n.output}
    inputs = {i.name for i in g.input}
    c = collections.Counter()
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            src = n.input[0]
            if src in prod and prod[src] == "Cast" or src in inputs:
                c["(graph input)"] += 1
            elif src in prod:
                c[prod[src]] += 1
            else:
                c["(weight)"] += 1
    return dict(sorted(c.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/modelopt_compare")
    ap.add_argument("--calib-method", default="percentile", help="edgecv's calibration method (the recipe's)")
    a = ap.parse_args(argv)
    from modelopt.onnx.quantization import quantize as modelopt_quantize

    from edgecv import targets
    from edgecv.export.data import calib_and_eval_sets, split_off
    from edgecv.export.onnx_export import export_onnx
    from edgecv.export.quantize import calibrate, quantize
    from edgecv.models import create_model
    from edgecv.recipe import ExportConfig
    from edgecv.runtime.backends.ort import OrtBackend
    from edgecv.train.sources import data_config_from_spec

    spec = lite0_spec()
    cal, held = calib_and_eval_sets(data_config_from_spec(spec), str(SHARED), str(SHARED), 250, None, show_progress=False)
    tune, ev = split_off(held, ExportConfig().tune_fraction, 0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgecv-modelopt-") as tmp:
        w = Path(tmp)
        fp32 = w / "fp32.onnx"
        export_onnx(create_model("efficientnet_lite0", pretrained=True).eval(), fp32, (3, 224, 224), 19)  # int8 needs 19
        calib = calibrate(fp32, cal.x, a.calib_method)
        trt = targets.get("tensorrt")
        before = targets.Target(**{**trt.__dict__, "quant": {k: v for k, v in trt.quant.items()
                                                              if k != "OpTypesToExcludeOutputQuantization"}})
        models = {}
        quantize(fp32, calib, w / "edgecv.onnx", trt)
        models[f"edgecv TensorRT target ({a.calib_method})"] = w / "edgecv.onnx"
        quantize(fp32, calib, w / "edgecv_before.onnx", before)
        models[f"edgecv before (also conv outputs, logits; {a.calib_method})"] = w / "edgecv_before.onnx"
        for method in ("max", "entropy"):
            out = w / f"modelopt_{method}.onnx"
            modelopt_quantize(onnx_path=str(fp32), quantize_mode="int8", calibration_data=cal.x,
                              calibration_method=method, output_path=str(out), calibration_eps=["cpu"],
                              high_precision_dtype="fp32")
            models[f"ModelOpt int8 ({method})"] = out

        def logits(path, x):
            be = OrtBackend(str(path), threads=2)
            return np.concatenate([be.run_unchecked(x[i: i + 25]) for i in range(0, len(x), 25)])

        ref_t, ref_e = logits(fp32, tune.x), logits(fp32, ev.x)
        for name, path in models.items():
            lt, le = logits(path, tune.x), logits(path, ev.x)
            rows.append({"model": name, "placement": placement(path),
                         "tune_agreement": float((lt.argmax(1) == ref_t.argmax(1)).mean()),
                         "eval_agreement": float((le.argmax(1) == ref_e.argmax(1)).mean()),
                         "eval_top1": float((le.argmax(1) == ev.y).mean())})
    meta = {"fp32_eval_top1": float((ref_e.argmax(1) == ev.y).mean()), "calibration": len(cal), "tune": len(tune),
            "evaluation": len(ev)}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "modelopt_compare.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"EfficientNet-Lite0, {meta['calibration']} calibration / {meta['tune']} tune / {meta['evaluation']} "
             f"evaluation images; fp32 top-1 on evaluation {meta['fp32_eval_top1']:.3f}; run with ONNX Runtime", "",
             "| int8 model | activation Q/DQ by producing op | tune agreement | eval agreement | eval top-1 |",
             "|---|---|---|---|---|"]
    for r in rows:
        where = ", ".join(f"{k} {v}" for k, v in r["placement"].items())
        lines.append(f"| {r['model']} | {where} | {r['tune_agreement']:.1%} | {r['eval_agreement']:.1%} | {r['eval_top1']:.3f} |")
    (out / "modelopt_compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
