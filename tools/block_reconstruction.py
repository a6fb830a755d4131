"""Block-wise reconstruction of int8 EfficientNet-Lite0 (BRECQ / QDrop style), against its fp32 on three kinds of
photographs calibration never saw.

    python tools/block_reconstruction.py [--images 500] [--calib 512] [--iters 60] [--lr 5e-5] [--qdrop 0.5]
                                         [--size 224] [--out out/block_reconstruction]

The model is the QAT rung's fake-quantized Lite0 (``edgecv.compress.qat.prepare_qat``: TensorRT's symmetric int8,
per-channel weights, per-tensor inputs of every weighted layer, nearest rounding, no bias correction), fitted as the
export's QAT rung fits it with ``--qat-method blocks`` (``edgecv.compress.blockwise``): unit by unit (the stem, each
of the 16 blocks, the head with the classifier), its weights and BatchNorm parameters by Adam (cosine-decayed from
``--lr``) to the fp32 unit's output on the calibration images, given as input what the already reconstructed
quantized units before it give; with ``--qdrop p`` a share p of each batch sees the fp32 input instead (QDrop).
Calibration takes images from the imagenette and Caltech-101 folders after the ones judged, as
tools/weight_rounding.py does; ImageNet samples are only judged. Agreement is top-1 with fp32; in brackets, the
share of the logit error that 99% agreement allows (edgecv.metrics.error_scale_needed).
Writes ``reconstruction.md`` and ``reconstruction.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from weight_rounding import ROOT, SETS, _files, _load, agreement_cells, lite0_spec

sys.path.insert(0, str(ROOT))


def _run(fn, x, batch: int = 64):
    import torch

    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def _agreements(q, judged, ref) -> dict:
    import torch

    from edgecv.metrics import agreement, error_scale_needed

    row = {}
    for k, x in judged.items():
        logits = _run(q, torch.from_numpy(x)).numpy()
        row[k], row[f"{k} scale"] = agreement(ref[k], logits), error_scale_needed(ref[k], logits, 0.99)
    return row


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=500, help="judged per folder")
    ap.add_argument("--calib", type=int, default=512, help="calibration images (half imagenette, half Caltech)")
    ap.add_argument("--iters", type=int, default=60, help="Adam steps of 32 images per unit")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--qdrop", type=float, default=0.5, help="share of each batch given the fp32 input")
    ap.add_argument("--size", type=int, default=224, help="input pixels (Lite0 is trained at 224)")
    ap.add_argument("--out", default="out/block_reconstruction")
    a = ap.parse_args(argv)
    if a.images < 1 or a.calib < 2 or a.iters < 1 or a.size < 32 or not 0 < a.lr < 1 or not 0 <= a.qdrop <= 1:
        ap.error("--images >= 1, --calib >= 2, --iters >= 1, --size >= 32, 0 < --lr < 1 and 0 <= --qdrop <= 1")
    return a


def main(argv=None) -> int:
    a = _args(argv)
    import torch

    from edgecv.compress.blockwise import BlockConfig, reconstruct
    from edgecv.compress.qat import prepare_qat
    from edgecv.models import create_model
    from edgecv.runtime.preprocess import Preprocessor

    torch.manual_seed(0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pre = Preprocessor(lite0_spec(a.size))
    judged = {k: _load(_files(k)[: a.images], pre) for k in SETS}
    half = a.calib // 2
    cal = _load(_files("imagenette")[a.images: a.images + half] + _files("caltech101")[a.images: a.images + half], pre)
    fp = create_model("efficientnet_lite0", pretrained=True).eval()
    ref = {k: _run(fp, torch.from_numpy(x)).numpy() for k, x in judged.items()}
    q = prepare_qat(fp, cal)
    rows = [{"model": "int8, nearest rounding", **_agreements(q, judged, ref)}]
    t0 = time.perf_counter()
    trace = reconstruct(fp, q, cal, BlockConfig(steps=a.iters, lr=a.lr, qdrop=a.qdrop))
    rows.append({"model": f"reconstructed ({a.iters} steps a unit, lr {a.lr:g}, qdrop {a.qdrop:g})",
                 **_agreements(q, judged, ref), "seconds": round(time.perf_counter() - t0)})
    res = {"images": a.images, "calib": len(cal), "size": a.size, "rows": rows, "trace": trace}
    (out / "reconstruction.json").write_text(json.dumps(res, indent=1))
    lines = ["| model | " + " | ".join(SETS) + " |", "|" + "---|" * (len(SETS) + 1)]
    lines += [f"| {r['model']} | {agreement_cells(r)} |" for r in rows]
    (out / "reconstruction.md").write_text(
        f"Agreement with fp32, {a.images} images per folder at {a.size} px, {len(cal)} calibration images, "
        f"reconstruction {rows[-1]['seconds']} s (in brackets: the share of the logit error that 99% agreement "
        "allows)\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
