"""What pruning buys and costs before any distillation: top-1, agreement and int8 batch-1 speed per ratio and method,
per number of residual blocks removed (``export --drop-blocks``), and per smaller input size (``export
--input-size``).

    python tools/prune_tradeoff.py [--checkpoint runs/caltech/model.pt]
        [--recipe recipes/transfer_lite0_caltech101.yaml] [--ratios 0.3,0.5,0.6,0.7] [--methods reconstruct,magnitude]
        [--drop-blocks 3,5,7,9] [--sizes 192,176,160] [--fit 256] [--eval 400] [--out out/prune_tradeoff]

Each pruned model is refitted (reconstruct) on ``--fit`` training photographs of the recipe and judged on the first
``--eval`` photographs of its held-out split, by top-1 and by agreement with the unpruned model. Every model, the
unpruned one included, is quantized for OpenVINO the same way (percentile calibration on the fit photographs) and
timed at batch 1 in interleaved rounds in the same run, so speed is a ratio against the unpruned int8 measured
alongside. Writes tradeoff.md, tradeoff.json and tradeoff.png.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def photographs(recipe_path: str, fit: int, n_eval: int, size=None):
    """(fit images from the training split, eval images and labels from the held-out split), preprocessed (at
    ``size``: as the bundle of ``export --input-size`` would). Both are seeded random samples: the splits list images
    folder by folder, so their first images are a few classes."""
    from torch.utils.data import DataLoader, Subset

    from edgecv.data.loaders import build_dataset
    from edgecv.data.transforms import at_input_size
    from edgecv.recipe import load_recipe

    cfg = at_input_size(load_recipe(recipe_path).data, size)
    train, val = build_dataset(cfg, "train", train_aug=False), build_dataset(cfg, "val")
    pick = np.random.default_rng(0).permutation(len(train))[:fit].tolist()

    def stack(ds, idx):
        xs, ys = zip(*DataLoader(Subset(ds, idx), 64))
        return torch.cat(xs).numpy(), torch.cat(ys).numpy()

    judged = np.random.default_rng(1).permutation(len(val))[:n_eval or len(val)].tolist()
    return stack(train, pick)[0], *stack(val, judged)


@torch.no_grad()
def predictions(model, x: np.ndarray) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i: i + 64])).argmax(1).numpy() for i in range(0, len(x), 64)])


def int8_file(model, fit: np.ndarray, work: Path, name: str, shape, method: str = "percentile",
              target: str = "openvino") -> str:
    """``model`` exported to ONNX in ``work`` and quantized for ``target``, calibrated on ``fit`` with ``method``
    (without bias correction when ``method`` is minmax, a timing-only file); the int8 file's path."""
    from edgecv.export.onnx_export import export_onnx
    from edgecv.export.quantize import calibrate, quantize

    fp32, out = work / f"{name}.onnx", work / f"{name}_int8.onnx"
    export_onnx(model, fp32, shape)
    quantize(fp32, calibrate(fp32, fit, method, bias_correction=method != "minmax"), out, target)
    return str(out)


def measure(args) -> List[Dict]:
    from edgecv import targets
    from edgecv.compress.depth import drop_blocks
    from edgecv.compress.macs import count_macs
    from edgecv.compress.prune import prune_channels
    from edgecv.export.gates import speed_gate
    from edgecv.models.checkpoint import load_checkpoint

    base, _ = load_checkpoint(args.checkpoint)
    fit, x, y = photographs(args.recipe, args.fit, args.eval)
    shape = tuple(x.shape[1:])
    ref = predictions(base, x)
    rows = [{"method": "unpruned", "ratio": 0.0, "size": shape[-1], "mmac": count_macs(base, shape)[0] / 1e6,
             "top1": float((ref == y).mean()), "agreement": 1.0, "judged": len(y)}]
    inputs = {}
    with tempfile.TemporaryDirectory(prefix="edgecv-prune-tradeoff-") as tmp:
        files = {"unpruned": int8_file(base, fit, Path(tmp), "unpruned", shape)}
        for method in args.methods:
            for r in args.ratios:
                m, rep = prune_channels(copy.deepcopy(base), shape, r, images=fit, method=method, show_progress=True)
                p = predictions(m, x)
                key = f"{method} {r:g}"
                rows.append({"method": method, "ratio": r, "size": shape[-1], "mmac": rep.macs_after / 1e6,
                             "top1": float((p == y).mean()), "agreement": float((p == ref).mean()), "judged": len(y)})
                files[key] = int8_file(m, fit, Path(tmp), key.replace(" ", "_"), shape)
                print(f"{key}: {rows[-1]['mmac']:.0f} MMAC, top-1 {rows[-1]['top1']:.3f}, "
                      f"agreement {rows[-1]['agreement']:.3f}", flush=True)
        for n in args.drop_blocks:
            m, rep = drop_blocks(copy.deepcopy(base), n, fit, shape, show_progress=True)
            p = predictions(m, x)
            rows.append({"method": "drop blocks", "ratio": n, "size": shape[-1], "mmac": rep.macs_after / 1e6,
                         "top1": float((p == y).mean()), "agreement": float((p == ref).mean()), "judged": len(y)})
            files[_key(rows[-1])] = int8_file(m, fit, Path(tmp), f"depth{n}", shape)
            print(f"{_key(rows[-1])} ({', '.join(rep.dropped)}): top-1 {rows[-1]['top1']:.3f}", flush=True)
        for size in args.sizes:
            fit_s, x_s, y_s = photographs(args.recipe, args.fit, args.eval, size)
            p = predictions(base, x_s)
            rows.append({"method": "input size", "ratio": 0.0, "size": size,
                         "mmac": count_macs(base, x_s.shape[1:])[0] / 1e6, "top1": float((p == y_s).mean()),
                         "agreement": float((p == ref).mean()), "judged": len(y_s)})
            files[_key(rows[-1])] = int8_file(base, fit_s, Path(tmp), f"size{size}", x_s.shape[1:])
            inputs[_key(rows[-1])] = x_s[:1]
            print(f"{_key(rows[-1])}: top-1 {rows[-1]['top1']:.3f}", flush=True)
        t = targets.get("openvino")
        speed = speed_gate({k: (f, t) for k, f in files.items()}, x[:1], iters=300, inputs=inputs)
    for row in rows:
        key = _key(row)
        row["int8_p50_ms"] = speed[key]["p50_ms"]
        row["speedup_vs_unpruned_int8"] = speed["unpruned"]["p50_ms"] / speed[key]["p50_ms"]
    return rows


def _key(row: Dict) -> str:
    if row["method"] == "unpruned":
        return "unpruned"
    return f"size {row['size']}" if row["method"] == "input size" else f"{row['method']} {row['ratio']:g}"


def report(rows: List[Dict], args) -> str:
    sizes = (f" --drop-blocks {','.join(map(str, args.drop_blocks))}" if args.drop_blocks else "") + \
        (f" --sizes {','.join(map(str, args.sizes))}" if args.sizes else "")
    lines = [f"`python tools/prune_tradeoff.py --checkpoint {args.checkpoint} --recipe {args.recipe} --methods "
             f"{','.join(args.methods)} --ratios {','.join(f'{r:g}' for r in args.ratios)}{sizes}` "
             f"({len(rows) - 1} compressed models; fit {args.fit} training photographs, judged on "
             f"{rows[0]['judged']} held-out ones)",
             "", "| method | ratio | input | MMAC | top-1 (no distillation) | agreement with unpruned | OpenVINO int8 p50 ms | "
             "speed-up vs unpruned int8 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['ratio']:g} | {r['size']} | {r['mmac']:.0f} | {r['top1']:.3f} | "
                     f"{r['agreement']:.3f} | "
                     f"{r['int8_p50_ms']:.3f} | {r['speedup_vs_unpruned_int8']:.2f}x |")
    return "\n".join(lines) + "\n"


def plot(rows: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgecv.utils.io import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "unpruned"):  # each curve starts there
        pts = [(r["speedup_vs_unpruned_int8"], r["top1"]) for r in rows if r["method"] in (method, "unpruned")]
        ax.plot(*zip(*sorted(pts)), "o-", label=method)
    ax.set_xlabel("batch-1 speed-up vs unpruned int8 (OpenVINO)")
    ax.set_ylabel("top-1 before distillation")
    ax.legend()
    ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    from edgecv.utils.io import atomic_write_json, atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="runs/caltech/model.pt")
    ap.add_argument("--recipe", default="recipes/transfer_lite0_caltech101.yaml")
    ap.add_argument("--ratios", default="0.3,0.5,0.6,0.7", type=lambda s: [float(v) for v in s.split(",")])
    ap.add_argument("--methods", default="reconstruct,magnitude", type=lambda s: s.split(","))
    ap.add_argument("--drop-blocks", default="", type=lambda s: [int(v) for v in s.split(",") if v],
                    help="numbers of residual blocks to remove, unpruned otherwise (export --drop-blocks); default: none")
    ap.add_argument("--sizes", default="", type=lambda s: [int(v) for v in s.split(",") if v],
                    help="smaller input sizes to compare, unpruned (export --input-size); default: none")
    ap.add_argument("--fit", type=int, default=256)
    ap.add_argument("--eval", type=int, default=0, help="held-out photographs judged on (0: all)")
    ap.add_argument("--out", default="out/prune_tradeoff")
    args = ap.parse_args(argv)
    from edgecv.recipe import PRUNE_METHODS

    bad = [f"--ratios: {r:g} is not in (0, 1)" for r in args.ratios if not 0 < r < 1] + \
          [f"--methods: unknown {m!r} (expected {', '.join(PRUNE_METHODS)})" for m in args.methods
           if m not in PRUNE_METHODS] + \
          [f"--sizes: {v} is below 8" for v in args.sizes if v < 8] + \
          [f"--drop-blocks: {v} is below 1" for v in args.drop_blocks if v < 1] + \
          (["--fit must be at least 1"] if args.fit < 1 else []) + (["--eval must be 0 (all) or more"] if args.eval < 0 else [])
    if bad:
        print(f"error: {bad[0]}", file=sys.stderr)
        return 2
    for p in (args.checkpoint, args.recipe):
        if not Path(p).is_file():
            print(f"error: {p}: no such file", file=sys.stderr)
            return 2
    try:
        rows = measure(args)
    except ValueError as e:  # a ratio outside (0, 1), a method a model cannot be pruned by
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = report(rows, args)
    atomic_write_text(out / "tradeoff.md", text)
    atomic_write_json(out / "tradeoff.json", rows)
    plot(rows, out / "tradeoff.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
