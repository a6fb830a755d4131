"""Accuracy of each calibration method edgecv offers, on the same calibration and held-out images.

python tools/calib_methods.py [RECIPE] [--calib DIR] [--samples 250] [--target onnxruntime|tensorrt]
Defaults: EfficientNet-Lite0 on the shared ImageNet images (250 calibrate, the other 250 evaluate).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecv.export.data import calib_and_eval_sets  # noqa: E402
from edgecv.export.gates import eval_onnx  # noqa: E402
from edgecv.export.onnx_export import export_onnx  # noqa: E402
from edgecv.export.quantize import CALIB_METHODS, calibrate, quantize  # noqa: E402
from edgecv.train.sources import load_source  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "efficientnet_lite0_imagenet.yaml"))
    ap.add_argument("--calib", default=str(ROOT.parent / "shared" / "data" / "imagenet-samples"))
    ap.add_argument("--samples", type=int, default=250)
    ap.add_argument("--targets", default="onnxruntime,tensorrt")
    a = ap.parse_args()
    src = load_source(a.recipe)
    cal, ev = calib_and_eval_sets(src.data, a.calib, a.calib, a.samples, None)
    shape = (src.data.channels, src.data.input_size, src.data.input_size)
    out = {"calibration_images": len(cal), "evaluation_images": len(ev), "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(src.model, fp32, shape)
        out["fp32_top1"] = eval_onnx(fp32, ev.x, ev.y)["top1"]
        for m in CALIB_METHODS:
            c = calibrate(fp32, cal.x, m)
            res = {"input_range": c.range_of("input")}
            for t in a.targets.split(","):
                q = Path(tmp) / f"{m}_{t}.onnx"
                quantize(fp32, c, q, t)
                res[f"{t}_top1"] = eval_onnx(q, ev.x, ev.y)["top1"]
            out["methods"][m] = res
            print(m, json.dumps(res), flush=True)
    print(json.dumps(out, indent=2))
