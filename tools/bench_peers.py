"""edgecv against the runtimes users would pick instead, measured in one run on this machine.

    python tools/bench_peers.py [--models efficientnet_lite0,resnet18,mobilenet_v2] [--out DIR] [--iters 200]
    python tools/bench_peers.py --smoke        # a few iterations, one model: keeps the script from rotting

Per model, batch 1, 2 threads, all backends interleaved in rounds (machine noise lands on all of them):
PyTorch eager fp32, torch.compile fp32, ONNX Runtime fp32, edgecv's default CPU artefact (``edgecv export
--int8``), OpenVINO fp32 (INFERENCE_PRECISION_HINT=f32), OpenVINO's default precision, NNCF int8 (when
installed). Top-1 on the shared ImageNet images not used for calibration (ResNet-18 and MobileNetV2 use
random weights: their top-1 is meaningless, their latency is not). Also the Fashion-MNIST quickstart bundle
against its unpruned fp32 model. Writes peers.md, peers.json, peers.png, and records CPU model/flags,
library versions and the CPU time other processes used during the run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "imagenet-samples"
sys.path.insert(0, str(ROOT))

from edgecv.runtime.latency import measure_interleaved  # noqa: E402


def cpu_info() -> Dict:
    info = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and "model" not in info:
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags") and "flags" not in info:
                flags = line.split(":", 1)[1].split()
                info["flags"] = [f for f in flags if f.startswith(("avx", "amx", "fma", "sse4", "vnni", "f16c"))]
    except OSError:
        pass
    return info


def busy_jiffies() -> int:
    """All CPUs' non-idle time from /proc/stat (clock ticks)."""
    vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(vals) - vals[3] - vals[4]  # minus idle and iowait


def versions() -> Dict:
    out = {}
    for m in ("torch", "onnxruntime", "onnx", "openvino", "nncf", "numpy", "edgecv"):
        try:
            mod = __import__(m)
            out[m] = getattr(mod, "__version__", None) or getattr(getattr(mod, "runtime", None), "get_version", lambda: "?")()
        except Exception:
            out[m] = None
    return out


def openvino_models(onnx_path: str, threads: int) -> Dict[str, Callable]:
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    out = {}
    for label, cfg in [("openvino fp32", {"INFERENCE_PRECISION_HINT": "f32"}), ("openvino default", {})]:
        cfg = dict(cfg, INFERENCE_NUM_THREADS=threads, PERFORMANCE_HINT="LATENCY")
        out[label] = core.compile_model(onnx_path, "CPU", cfg)
    return out


def nncf_int8(onnx_path: str, calib: np.ndarray, threads: int):
    try:
        import nncf
        import openvino as ov
    except ImportError:
        return None
    model = ov.Core().read_model(onnx_path)
    q = nncf.quantize(model, nncf.Dataset(list(calib), lambda x: x[None]), subset_size=len(calib))
    return ov.Core().compile_model(q, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})


def ov_runner(compiled):
    req = compiled.create_infer_request()
    return lambda x: req.infer({0: x})[compiled.output(0)]


def top1(run: Callable, x: np.ndarray, y: np.ndarray) -> float:
    pred = np.array([int(np.argmax(run(x[i: i + 1]))) for i in range(len(x))])
    return float((pred == y).mean())


def bench_model(name: str, args, workdir: Path) -> List[Dict]:
    import torch

    from edgecv.compress.macs import count_macs
    from edgecv.export.onnx_export import export_onnx
    from edgecv.export.pipeline import export_bundle
    from edgecv.models import create_model
    from edgecv.models.checkpoint import make_checkpoint, save_checkpoint
    from edgecv.runtime.bundle import open_bundle
    from edgecv.runtime.ort_backend import OrtBackend

    pretrained = name == "efficientnet_lite0"
    model = create_model(name, pretrained=pretrained).eval()
    macs, _ = count_macs(model, (3, 224, 224))
    lite = name.startswith("efficientnet_lite")
    mean, std = ([127 / 255] * 3, [128 / 255] * 3) if lite else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    spec = {"input_size": 224, "resize": 256, "crop": 224, "channels": 3, "mean": mean, "std": std}
    from edgecv.data.folders import read_classes_tsv

    classes = read_classes_tsv(SHARED / "classes.tsv")[0]
    ckpt = workdir / f"{name}.pt"
    save_checkpoint(make_checkpoint(model, name, {}, classes, spec), ckpt)
    bundle = workdir / f"{name}_bundle"
    t0 = time.time()
    export_bundle(str(ckpt), str(bundle), {"calib": str(SHARED), "eval": str(SHARED), "calib_samples": args.calib,
                                           "calib_method": "percentile" if lite else "minmax",
                                           "max_drop": 0.5 if pretrained else 100.0,
                                           # random weights: agreement with fp32 is meaningless, not a gate
                                           "min_agreement": 0.99 if pretrained else 0.0,
                                           "targets": ["onnxruntime"], "eval_limit": args.eval_limit},
                  show_progress=False)
    export_s = time.time() - t0
    b = open_bundle(bundle)
    default = b.manifest["default"]["onnxruntime"]
    # The same held-out images the export's gate used (those not in its calibration subset).
    from edgecv.export.data import calib_and_eval_sets
    from edgecv.train.sources import data_config_from_spec

    _, ev = calib_and_eval_sets(data_config_from_spec(spec), str(SHARED), str(SHARED), args.calib, args.eval_limit,
                                show_progress=False)
    x, y = ev.x, ev.y
    onnx_fp32 = workdir / f"{name}.onnx"
    export_onnx(model, onnx_fp32, (3, 224, 224))
    torch.set_num_threads(args.threads)
    runs: Dict[str, Callable] = {}

    def torch_run(m):
        def f(a):
            with torch.inference_mode():
                return m(torch.from_numpy(a)).numpy()
        return f

    runs["pytorch eager fp32"] = torch_run(model)
    if not args.no_compile:
        compiled = torch.compile(model)
        runs["torch.compile fp32"] = torch_run(compiled)
        runs["torch.compile fp32"](x[:1])  # compile now, outside the timed loop
    ort32 = OrtBackend(str(onnx_fp32), threads=args.threads)
    runs["onnxruntime fp32"] = ort32.run_unchecked
    edge = OrtBackend(str(b.path(default["file"])), threads=args.threads)
    runs[f"edgecv default ({default['precision']})"] = edge.run_unchecked
    for label, cm in openvino_models(str(onnx_fp32), args.threads).items():
        runs[label] = ov_runner(cm)
    if not args.no_nncf:
        q = nncf_int8(str(onnx_fp32), np.stack([xi for xi in x[: min(len(x), 64)]]), args.threads)
        if q is not None:
            runs["openvino nncf int8"] = ov_runner(q)
    one = np.ascontiguousarray(x[:1])
    lat = measure_interleaved({k: (lambda f=f: f(one)) for k, f in runs.items()}, warmup=args.warmup, iters=args.iters)
    rows = []
    eager = lat["pytorch eager fp32"]["p50_ms"]
    for k, f in runs.items():
        acc = top1(f, x, y)
        rows.append({"model": name, "weights": "ImageNet" if pretrained else "random", "backend": k,
                     "p50_ms": lat[k]["p50_ms"], "p90_ms": lat[k]["p90_ms"], "speedup_vs_eager": eager / lat[k]["p50_ms"],
                     "top1": acc, "top1_meaningful": pretrained, "gmac_per_s": macs / 1e9 / (lat[k]["p50_ms"] / 1e3),
                     "gmac": macs / 1e9, "n_eval": int(len(y))})
    rows.append({"model": name, "backend": "_export", "export_s": export_s, "default_reason": default["reason"]})
    return rows


def bench_fashion(args) -> List[Dict]:
    """The quickstart bundle's default artefact vs the unpruned fp32 model, on the Fashion-MNIST test set."""
    from edgecv.data.fashion_mnist import load_fashion_mnist
    from edgecv.export.onnx_export import export_onnx
    from edgecv.models.checkpoint import load_checkpoint
    from edgecv.runtime.bundle import open_bundle
    from edgecv.runtime.ort_backend import OrtBackend
    from edgecv.runtime.preprocess import Preprocessor

    bundle, ckpt = Path(args.fashion_bundle), Path(args.fashion_checkpoint)
    if not (bundle / "manifest.json").exists() or not ckpt.exists():
        return [{"model": "fashion_cnn", "backend": "_skipped", "reason": f"{bundle} or {ckpt} missing: run the README quickstart"}]
    b = open_bundle(bundle)
    model, _ = load_checkpoint(ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "unpruned.onnx"
        export_onnx(model, base, (1, 28, 28))
        pre = Preprocessor(b.preprocess)
        xs, ys = load_fashion_mnist("/usr/share/datasets/fashion-mnist", "test")
        n = 10000 if not args.smoke else 500
        x = np.stack([pre(xs[i]) for i in range(n)])
        y = ys[:n]
        runs = {"unpruned fp32 (onnxruntime)": OrtBackend(str(base), threads=args.threads).run_unchecked}
        art = b.manifest["default"]["onnxruntime"]
        runs[f"edgecv quickstart default ({art['precision']}, pruned)"] = OrtBackend(str(b.path(art["file"])),
                                                                                  threads=args.threads).run_unchecked
        one = np.ascontiguousarray(x[:1])
        lat = measure_interleaved({k: (lambda f=f: f(one)) for k, f in runs.items()}, warmup=args.warmup,
                                  iters=args.iters * 5)
        rows = []
        base_ms = lat["unpruned fp32 (onnxruntime)"]["p50_ms"]
        for k, f in runs.items():
            logits = np.concatenate([f(x[i: i + 500]) for i in range(0, n, 500)])
            rows.append({"model": "fashion_cnn", "weights": "trained", "backend": k, "p50_ms": lat[k]["p50_ms"],
                         "p90_ms": lat[k]["p90_ms"], "speedup_vs_eager": None, "speedup_vs_unpruned": base_ms / lat[k]["p50_ms"],
                         "top1": float((logits.argmax(1) == y).mean()), "top1_meaningful": True, "n_eval": n})
    return rows


def write_outputs(out: Path, rows: List[Dict], meta: Dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# bench_peers ({meta['date']})", "",
             f"CPU: {meta['cpu'].get('model')} ({meta['cpu'].get('cores')} cores; flags {' '.join(meta['cpu'].get('flags', []))}); "
             f"threads {meta['threads']}; foreign CPU load during the run: {meta['foreign_cpu_cores']:.2f} cores on average", "",
             f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items() if v)}", "",
             "| model | backend | p50 ms | p90 ms | speed-up vs eager | top-1 | GMAC/s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["backend"].startswith("_"):
            continue
        sp = r.get("speedup_vs_eager") or r.get("speedup_vs_unpruned")
        sp_txt = f"{sp:.2f}x" + ("" if r.get("speedup_vs_eager") else " (vs unpruned fp32)") if sp else ""
        acc = f"{r['top1']:.3f}" + ("" if r["top1_meaningful"] else " (random weights)")
        gm = f"{r['gmac_per_s']:.1f}" if r.get("gmac_per_s") else ""
        lines.append(f"| {r['model']} | {r['backend']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {sp_txt} | {acc} | {gm} |")
    lines += ["", "Fastest peer per model vs edgecv's default artefact:", ""]
    for m in sorted({r["model"] for r in rows if "speedup_vs_eager" in r and r.get("speedup_vs_eager")}):
        mr = [r for r in rows if r["model"] == m and not r["backend"].startswith("_")]
        edge = next(r for r in mr if r["backend"].startswith("edgecv"))
        peer = min((r for r in mr if not r["backend"].startswith("edgecv")), key=lambda r: r["p50_ms"])
        lines.append(f"- {m}: edgecv {edge['p50_ms']:.3f} ms vs fastest peer {peer['backend']} {peer['p50_ms']:.3f} ms "
                     f"({peer['p50_ms'] / edge['p50_ms']:.2f}x)")
    (out / "peers.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows if not r["backend"].startswith("_")})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        for r in (r for r in rows if r["model"] == m and not r["backend"].startswith("_")):
            ax.scatter(r["p50_ms"], r["top1"] * 100, s=40)
            ax.annotate(r["backend"], (r["p50_ms"], r["top1"] * 100), fontsize=7, xytext=(4, 3), textcoords="offset points")
        meaningful = any(r.get("top1_meaningful") for r in rows if r["model"] == m)
        ax.set_title(m + ("" if meaningful else " (random weights)"))
        ax.set_xlabel("p50 latency, ms (batch 1)")
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "peers.png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientnet_lite0,resnet18,mobilenet_v2")
    ap.add_argument("--out", default="out/bench_peers")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", type=int, default=250)
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-nncf", action="store_true")
    ap.add_argument("--fashion-bundle", default="out/fashion")
    ap.add_argument("--fashion-checkpoint", default="runs/fashion_mnist/model.pt")
    ap.add_argument("--smoke", action="store_true", help="few iterations, MobileNetV2 only, no torch.compile/NNCF")
    a = ap.parse_args(argv)
    if a.smoke:
        a.models, a.iters, a.warmup, a.calib, a.eval_limit = "mobilenet_v2", 10, 2, 16, 16
        a.no_compile = a.no_nncf = True
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    t0, busy0 = time.time(), busy_jiffies()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    rows: List[Dict] = []
    with tempfile.TemporaryDirectory(prefix="edgecv-peers-") as tmp:
        for m in [m.strip() for m in a.models.split(",") if m.strip()]:
            print(f"[bench_peers] {m} ...", flush=True)
            rows += bench_model(m, a, Path(tmp))
    rows += bench_fashion(a)
    wall = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    ours = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    ticks = os.sysconf("SC_CLK_TCK")
    foreign = max(0.0, (busy_jiffies() - busy0) / ticks - ours) / wall
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_info(), "versions": versions(), "threads": a.threads,
            "iters": a.iters, "wall_s": wall, "foreign_cpu_cores": foreign, "smoke": a.smoke}
    write_outputs(Path(a.out), rows, meta)
    print((Path(a.out) / "peers.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
