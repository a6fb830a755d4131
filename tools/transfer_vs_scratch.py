"""Transfer learning vs training from scratch, same architecture, same budget, same data.

python tools/transfer_vs_scratch.py [--epochs 3] [--train-limit 6000] [--out runs/transfer_vs_scratch]
Prints both test top-1 numbers (full Fashion-MNIST test set) and writes results.json.
"""
import argparse
import json
from pathlib import Path

from edgecv.recipe import load_recipe
from edgecv.train.loop import train

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-limit", type=int, default=6000)
    ap.add_argument("--out", default="runs/transfer_vs_scratch")
    a = ap.parse_args()
    common = [f"train.epochs={a.epochs}", f"data.train_limit={a.train_limit}"]
    res = {}
    for name, extra in [("transfer", []), ("scratch", ["model.pretrained=false", "model.freeze_backbone_epochs=0"])]:
        r = load_recipe(ROOT / "recipes" / "transfer_lite0_fashion.yaml", common + extra)
        m = train(r, Path(a.out) / name)
        res[name] = {"top1": m["top1"], "top5": m["top5"], "n": m["n"]}
        print(f"{name}: top-1 {m['top1']:.4f}", flush=True)
    res["transfer_minus_scratch_points"] = (res["transfer"]["top1"] - res["scratch"]["top1"]) * 100
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
