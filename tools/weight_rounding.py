"""How int8 weight rounding changes agreement with fp32: nearest, nearest with bias correction, and GPTQ, for each
CPU-run target form, on pretrained EfficientNet-Lite0 and three kinds of photographs calibration never saw.

    python tools/weight_rounding.py [--images 500] [--calib 256] [--targets tensorrt,onnxruntime,openvino]
                                    [--size 224] [--out out/weight_rounding]

Calibration takes images from the imagenette and Caltech-101 folders after the ones judged (disjoint by
position in one seeded shuffle per folder); ImageNet samples are only judged. Besides agreement, each cell says how
far off 99% it is: the share of the int8 logit error that 99% agreement on those images allows
(edgecv.metrics.error_scale_needed; 1.00: already there). Writes ``rounding.md`` and ``rounding.json``.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SETS = {"imagenette": ("imagenette", "*/*.JPEG"), "imagenet-samples": ("imagenet-samples", "*.JPEG"),
        "caltech101": ("caltech101", "*/*.jpg")}
ROUNDINGS = {"nearest": {"bias_correction": False}, "nearest + bias correction": {"bias_correction": True},
             "gptq": {"rounding": "gptq"}}
TARGETS = ("tensorrt", "onnxruntime", "openvino")


def lite0_spec(size: int = 224) -> dict:
    """Lite0's preprocessing as its pretrained weights came with it (the model registry's), at ``size`` pixels
    with the evaluation resize scaled as ``edgecv export --input-size`` scales it."""
    from edgecv.data.transforms import at_input_size, preprocess_spec
    from edgecv.models.registry import model_cfg
    from edgecv.train.sources import data_config_from_spec

    return preprocess_spec(at_input_size(data_config_from_spec({**model_cfg("efficientnet_lite0"), "channels": 3}),
                                         size))


def _files(name: str) -> list:
    folder, pattern = SETS[name]
    files = sorted((DATA / folder).glob(pattern))
    random.Random(0).shuffle(files)
    return files


def agreement_cells(row: dict) -> str:
    """A row's agreement per folder, each with the share of the logit error that 99% allows, as table cells."""
    return " | ".join(f"{row[k]:.1%} ({row[k + ' scale']:.2f}x)" for k in SETS)


def _load(files, pre) -> np.ndarray:
    from edgecv.runtime.preprocess import load_image

    return np.stack([pre(load_image(str(f), 3)) for f in files])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=500, help="judged per folder")
    ap.add_argument("--calib", type=int, default=256, help="calibration images (half imagenette, half Caltech)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, of " + ", ".join(TARGETS))
    ap.add_argument("--size", type=int, default=224, help="input pixels (Lite0 is trained at 224)")
    ap.add_argument("--out", default="out/weight_rounding")
    a = ap.parse_args(argv)
    chosen = [t.strip() for t in a.targets.split(",") if t.strip()]
    if a.images < 1 or a.calib < 2 or a.size < 32:
        print("weight_rounding: --images must be >= 1, --calib >= 2 and --size >= 32", file=sys.stderr)
        return 2
    if not chosen or set(chosen) - set(TARGETS):
        print(f"weight_rounding: --targets {a.targets!r}: give some of {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    from edgecv import targets
    from edgecv.export.gates import onnx_logits
    from edgecv.export.onnx_export import export_onnx
    from edgecv.export.quantize import calibrate, quantize
    from edgecv.metrics import agreement, error_scale_needed
    from edgecv.models import create_model
    from edgecv.runtime.preprocess import Preprocessor

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pre = Preprocessor(lite0_spec(a.size))
    judged = {k: _load(_files(k)[: a.images], pre) for k in SETS}
    half = a.calib // 2
    cal = _load(_files("imagenette")[a.images: a.images + half] + _files("caltech101")[a.images: a.images + half], pre)
    fp32 = out / "lite0_fp32.onnx"
    export_onnx(create_model("efficientnet_lite0", pretrained=True).eval(), fp32, (3, a.size, a.size))
    ref = {k: onnx_logits(fp32, x) for k, x in judged.items()}
    rows = []
    for rounding, kw in ROUNDINGS.items():
        t0 = time.perf_counter()
        c = calibrate(fp32, cal, "percentile", **kw)
        secs = time.perf_counter() - t0
        for t in chosen:
            tgt = targets.get(t)
            quantize(fp32, c, out / "q.onnx", tgt)
            row = {"rounding": rounding, "target": t, "calibrate_s": round(secs, 1)}
            for k, x in judged.items():
                logits = onnx_logits(out / "q.onnx", x, target=tgt)
                row[k], row[f"{k} scale"] = agreement(ref[k], logits), error_scale_needed(ref[k], logits, 0.99)
            rows.append(row)
            print(row, flush=True)
    (out / "q.onnx").unlink(missing_ok=True)
    (out / "rounding.json").write_text(json.dumps({"images": a.images, "calib": len(cal), "size": a.size, "rows": rows}, indent=1))
    head = "| rounding | target | " + " | ".join(SETS) + " | calibration s |"
    lines = [head, "|" + "---|" * (len(SETS) + 3)]
    lines += [f"| {r['rounding']} | {r['target']} | {agreement_cells(r)} | {r['calibrate_s']} |" for r in rows]
    (out / "rounding.md").write_text(f"Agreement with fp32, {a.images} images per folder at {a.size} px, "
                                     f"{len(cal)} calibration images (in brackets: the share of the logit error "
                                     "that 99% agreement allows)\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
