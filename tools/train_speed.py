"""CPU training speed of EfficientNet-Lite0 per layout and precision: what `edgecv train` and `export --distill`
gain from channels-last batches and bfloat16 autocast (edgecv.train.engine), as ratios against NCHW fp32 measured
in the same run, rounds interleaved so that a busy machine slows every mode alike.

    python tools/train_speed.py [--batch 32] [--size 224] [--rounds 5] [--json]

Each mode times a training step (forward, loss, backward, AdamW) with BatchNorm in train mode and with it frozen
(the Caltech recipe's), and an evaluation forward pass of the same batch. The "freed memory kept" rows run inside
edgecv.utils.memory.keep_freed_memory, as edgecv's training and evaluation loops do: otherwise glibc hands every
freed block above 32 MB back to the kernel and the next step page-faults it in again.
The bfloat16 rows are left out on a CPU without native bfloat16 (AVX512-BF16 or AMX), where edgecv does not use it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KEYS = ("train_step_s", "frozen_bn_step_s", "eval_forward_s")


def modes() -> Dict[str, Dict]:
    import torch

    from edgecv.train.engine import cpu_has_bf16

    out = {"NCHW fp32 (before)": {"channels_last": False, "dtype": None},
           "channels-last fp32": {"channels_last": True, "dtype": None},
           "channels-last fp32, freed memory kept": {"channels_last": True, "dtype": None, "keep": True}}
    if cpu_has_bf16():
        out["channels-last bfloat16 autocast"] = {"channels_last": True, "dtype": torch.bfloat16}
        out["channels-last bfloat16, freed memory kept"] = {"channels_last": True, "dtype": torch.bfloat16,
                                                             "keep": True}
    return out


def timed_round(model, opt, x, y, mode: Dict) -> Dict[str, float]:
    """Seconds of one training step and one evaluation forward pass in ``mode``. With ``keep``, inside
    ``keep_freed_memory`` after one untimed round in it: edgecv.train.engine keeps it for a whole epoch, so every
    step but the first finds the memory the step before freed (leaving the block hands it back)."""
    if not mode.get("keep"):
        return _timed(model, opt, x, y, mode)
    from edgecv.utils.memory import keep_freed_memory

    with keep_freed_memory():
        _timed(model, opt, x, y, mode)
        return _timed(model, opt, x, y, mode)


def _timed(model, opt, x, y, mode: Dict) -> Dict[str, float]:
    import torch
    import torch.nn.functional as F

    if mode["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    amp = {"device_type": "cpu", "dtype": mode["dtype"], "enabled": mode["dtype"] is not None}
    out = {}
    for key, frozen in (("train_step_s", False), ("frozen_bn_step_s", True)):
        model.train()
        if frozen:  # TrainConfig.batchnorm "frozen" (the Caltech recipe's): BatchNorm on its running statistics
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
        t0 = time.perf_counter()
        with torch.autocast(**amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out[key] = time.perf_counter() - t0
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast(**amp):
        model(x)
    out["eval_forward_s"] = time.perf_counter() - t0
    return out


def measure(batch: int, size: int, rounds: int) -> List[Dict]:
    import torch

    from edgecv.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", pretrained=False, num_classes=101)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 101, (batch,))
    ms = modes()
    times: Dict[str, Dict[str, List[float]]] = {m: {k: [] for k in KEYS} for m in ms}
    for mode in ms.values():  # warm-up: oneDNN picks and caches its kernels per layout and dtype
        timed_round(model, opt, x, y, mode)
    for _ in range(rounds):
        for name, mode in ms.items():
            for k, v in timed_round(model, opt, x, y, mode).items():
                times[name][k].append(v)
    rows = [{"mode": m, **{k: statistics.median(v) for k, v in t.items()}} for m, t in times.items()]
    for r in rows:
        for k in KEYS:
            r[k[:-2] + "_speedup"] = rows[0][k] / r[k]
    return rows


def table(rows: List[Dict], args) -> str:
    lines = [f"`python tools/train_speed.py --batch {args.batch} --size {args.size} --rounds {args.rounds}` "
             f"(EfficientNet-Lite0, 101 classes, median of {args.rounds} interleaved rounds)", "",
             "| mode | training step s | vs NCHW fp32 | step, BatchNorm frozen, s | vs NCHW fp32 | eval forward s | "
             "vs NCHW fp32 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | " + " | ".join(f"{r[k]:.3f} | {r[k[:-2] + '_speedup']:.2f}x"
                                                      for k in KEYS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if min(args.batch, args.size, args.rounds) < 1:
        ap.error("--batch, --size and --rounds must be at least 1")
    rows = measure(args.batch, args.size, args.rounds)
    print(json.dumps(rows, indent=1) if args.json else table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
