"""Which multiple pruned channel counts should be rounded to (``export.prune_round_to``): int8 batch-1 speed on
ONNX Runtime and OpenVINO against the unpruned int8, and top-1 before distillation, per ratio and rounding.

    python tools/prune_rounding.py [--checkpoint runs/caltech/model.pt]
        [--recipe recipes/transfer_lite0_caltech101.yaml] [--ratios 0.3,0.5] [--round-to 8,16,32] [--fit 256]
        [--eval 0] [--out out/prune_rounding]

Each model is pruned by ``reconstruct`` and refitted on ``--fit`` training photographs, judged on the held-out
photographs (all by default), quantized for each runtime the same way as the unpruned model (min-max calibration
on the fit photographs, ONNX Runtime's U8S8 Q/DQ), and timed in the same interleaved rounds as the unpruned int8,
twice, so each speed-up is a ratio within one run. Writes rounding.md and rounding.json.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

RUNTIMES = ("onnxruntime", "openvino")


def models(args, work: Path):
    """(rows without speed, int8 file per row key) for the unpruned model and every ratio x rounding."""
    from prune_tradeoff import int8_file, photographs, predictions

    from edgecv.compress.macs import count_macs
    from edgecv.compress.prune import prune_channels
    from edgecv.models.checkpoint import load_checkpoint

    base, _ = load_checkpoint(args.checkpoint)
    fit, x, y = photographs(args.recipe, args.fit, args.eval)
    shape = tuple(x.shape[1:])
    ref = predictions(base, x)
    rows = [{"key": "unpruned", "ratio": 0.0, "round_to": None, "mmac": count_macs(base, shape)[0] / 1e6,
             "top1": float((ref == y).mean()), "judged": len(y)}]
    files = {"unpruned": int8_file(base, fit, work, "unpruned", shape, "minmax", "onnxruntime")}
    for r in args.ratios:
        for k in args.round_to:
            m, rep = prune_channels(copy.deepcopy(base), shape, r, k, images=fit, method="reconstruct")
            key = f"{r:g} r{k}"
            p = predictions(m, x)
            rows.append({"key": key, "ratio": r, "round_to": k, "mmac": rep.macs_after / 1e6,
                         "top1": float((p == y).mean()), "judged": len(y)})
            files[key] = int8_file(m, fit, work, key.replace(" ", "_"), shape, "minmax", "onnxruntime")
            print(f"{key}: {rows[-1]['mmac']:.0f} MMAC, top-1 {rows[-1]['top1']:.3f}", flush=True)
    return rows, files, x[:1]


def measure(args) -> List[Dict]:
    from edgecv import targets
    from edgecv.export.gates import speed_gate

    with tempfile.TemporaryDirectory(prefix="edgecv-prune-rounding-") as tmp:
        rows, files, one = models(args, Path(tmp))
        timed = {f"{t} {k}": (f, targets.get(t), "int8") for t in RUNTIMES for k, f in files.items()}
        runs = [speed_gate(timed, one, iters=300) for _ in range(2)]
    for row in rows:
        for t in RUNTIMES:
            row[f"{t}_ms"] = [run[f"{t} {row['key']}"]["p50_ms"] for run in runs]
            row[f"{t}_speedup"] = [run[f"{t} unpruned"]["p50_ms"] / run[f"{t} {row['key']}"]["p50_ms"] for run in runs]
    return rows


def report(rows: List[Dict], args) -> str:
    base = rows[0]["mmac"]
    lines = [f"`python tools/prune_rounding.py --checkpoint {args.checkpoint} --ratios "
             f"{','.join(f'{r:g}' for r in args.ratios)} --round-to {','.join(map(str, args.round_to))}` "
             f"(top-1 before distillation on {rows[0]['judged']} held-out photographs; int8 batch 1, two interleaved "
             "runs, each against the unpruned int8 of the same run)", "",
             "| model | MMAC | fewer MACs | top-1 | ONNX Runtime speed-up | OpenVINO speed-up |", "|---|---|---|---|---|---|"]
    for r in rows:
        sp = [", ".join(f"{v:.2f}x" for v in r[f"{t}_speedup"]) for t in RUNTIMES]
        lines.append(f"| {r['key']} | {r['mmac']:.0f} | {base / r['mmac']:.2f}x | {r['top1']:.3f} | {sp[0]} | {sp[1]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from edgecv.utils.io import atomic_write_json, atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="runs/caltech/model.pt")
    ap.add_argument("--recipe", default="recipes/transfer_lite0_caltech101.yaml")
    ap.add_argument("--ratios", default="0.3,0.5", type=lambda s: [float(v) for v in s.split(",")])
    ap.add_argument("--round-to", default="8,16,32", type=lambda s: [int(v) for v in s.split(",")])
    ap.add_argument("--fit", type=int, default=256)
    ap.add_argument("--eval", type=int, default=0, help="held-out photographs judged on (0: all)")
    ap.add_argument("--out", default="out/prune_rounding")
    args = ap.parse_args(argv)
    bad = [f"--ratios: {r:g} is not in (0, 1)" for r in args.ratios if not 0 < r < 1] + \
          [f"--round-to: {k} is below 1" for k in args.round_to if k < 1] + \
          [f"{p}: no such file" for p in (args.checkpoint, args.recipe) if not Path(p).is_file()] + \
          ([f"--out {args.out}: exists and is not a folder"] if Path(args.out).exists() and not Path(args.out).is_dir()
           else [])
    if bad:  # before minutes of work, not after
        print(f"error: {bad[0]}", file=sys.stderr)
        return 2
    from edgecv.utils.signals import INTERRUPTS, exit_code, install

    install()  # SIGTERM as an exception: the temporary folder of ONNX files is removed on the way out
    try:
        rows = measure(args)
    except INTERRUPTS as e:
        print("interrupted", file=sys.stderr)
        return exit_code(e)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = report(rows, args)
    atomic_write_text(out / "rounding.md", text)
    atomic_write_json(out / "rounding.json", rows)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
