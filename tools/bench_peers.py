"""edgecv against the runtimes users would pick instead, measured in one run on this machine.

    python tools/bench_peers.py [--models efficientnet_lite0,resnet18,mobilenet_v2] [--out DIR] [--iters 600]
    python tools/bench_peers.py --smoke        # a few iterations, one model: keeps the script from rotting

Per model, batch 1, 2 threads, all backends interleaved in rounds (machine noise lands on all of them):
PyTorch eager fp32, torch.compile fp32, ONNX Runtime fp32, OpenVINO fp32 and default precision, NNCF int8 (when
installed), and edgecv's default CPU artefact (``edgecv export --int8``: the fastest CPU runtime's artefact within
the fidelity budget, run by edgecv's runtime), with edgecv's ONNX Runtime int8 beside it.

Fair to the peers: every OpenVINO peer is compiled with a static batch-1 shape and reads its input in place
(shared tensor), its strongest configuration; NNCF is calibrated on the same calibration images as edgecv, never
on the images that are scored. Top-1 and agreement with ONNX Runtime fp32 are measured on the export's evaluation
split only (disjoint from calibration and from the tune split that chose fallbacks). ResNet-18 and MobileNetV2 use
random weights: their top-1 is meaningless, their latency and agreement are not. Their BatchNorm layers get a trained
network's spread of scales and shifts and the calibration images' statistics (``trained_like_batchnorm``), so the
biases folded into the convolutions are not zero, as in any trained model.

Also the Fashion-MNIST quickstart bundle (pruned and distilled) against every peer running the unpruned model.
Each row reports p50/p90/p99, GMAC/s and the share of this machine's int8 peak (cores x the measured AVX-512 VNNI
rate, tools/int8_peak.c). Writes peers.md, peers.json, peers.png, with CPU model/flags, library versions and the
CPU time other processes used during the run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "imagenet-samples"
sys.path.insert(0, str(ROOT))

from edgecv.runtime.latency import measure_interleaved  # noqa: E402

EDGECV = "edgecv default"


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


def int8_peak(seconds: float = 0.5) -> Dict:
    """This machine's int8 MAC rate: tools/int8_peak.c (AVX-512 VNNI) on every core at once, summed."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return {"gmac_per_s": None, "how": "no C compiler: peak not measured"}
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "int8_peak"
        r = subprocess.run([cc, "-O2", "-mavx512f", "-mavx512vnni", "-o", str(exe), str(ROOT / "tools" / "int8_peak.c")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return {"gmac_per_s": None, "how": f"cannot build the VNNI probe: {r.stderr.strip()[:200]}"}
        procs = [subprocess.Popen([str(exe), str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for _ in range(os.cpu_count() or 1)]
        try:
            rates = [float(p.communicate(timeout=60)[0]) for p in procs]
        except (ValueError, subprocess.SubprocessError):
            return {"gmac_per_s": None, "how": "the VNNI probe failed (no AVX-512 VNNI?)"}
    return {"gmac_per_s": sum(rates) / 1e9, "per_core": [r / 1e9 for r in rates],
            "how": f"{len(rates)} cores x 12 independent vpdpbusd chains (64 int8 MACs each), run at once"}


def ov_peer(model, threads: int, hint: Optional[str]) -> Callable:
    """An OpenVINO peer at its best: static shape of the input it is given, input read in place."""
    import openvino as ov

    core = ov.Core()
    m = core.read_model(model) if isinstance(model, (str, Path)) else model
    cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if hint:
        cfg["INFERENCE_PRECISION_HINT"] = hint
    compiled: Dict[tuple, object] = {}
    bound: Dict[str, object] = {}

    def run(x: np.ndarray) -> np.ndarray:
        req = compiled.get(x.shape)
        if req is None:
            mm = m.clone()
            mm.reshape({mm.inputs[0]: list(x.shape)})
            req = compiled[x.shape] = core.compile_model(mm, "CPU", cfg).create_infer_request()
        if bound.get(id(req)) is not x:
            req.set_input_tensor(ov.Tensor(x, shared_memory=True))
            bound[id(req)] = x
        req.infer()
        return req.get_output_tensor(0).data.copy()

    return run


def peers(onnx_fp32: Path, calib: np.ndarray, threads: int, use_nncf: bool) -> Dict[str, Callable]:
    """ONNX Runtime fp32, OpenVINO fp32 / default precision / NNCF int8 (those installed) on the unpruned model."""
    from edgecv.runtime.backends.ort import OrtBackend

    out: Dict[str, Callable] = {"onnxruntime fp32": OrtBackend(str(onnx_fp32), threads=threads).run_unchecked}
    try:
        import openvino as ov
    except ImportError:
        return out
    out["openvino fp32"] = ov_peer(onnx_fp32, threads, "f32")
    out["openvino default"] = ov_peer(onnx_fp32, threads, None)
    if use_nncf:
        try:
            import nncf
        except ImportError:
            return out
        q = nncf.quantize(ov.Core().read_model(str(onnx_fp32)), nncf.Dataset(list(calib), lambda a: a[None]),
                          subset_size=len(calib))
        out["openvino nncf int8"] = ov_peer(q, threads, None)
    return out


def logits_of(run: Callable, x: np.ndarray) -> np.ndarray:
    return np.concatenate([run(np.ascontiguousarray(x[i: i + 1])) for i in range(len(x))])


def edgecv_runs(bundle: Path, threads: int) -> Dict[str, Callable]:
    """edgecv's default CPU artefact as ``--backend auto`` opens it (the manifest's cpu_default until verify has
    run), plus each CPU target's int8 artefact, all through edgecv's runtime."""
    from edgecv import targets
    from edgecv.runtime.backends.select import open_backend

    os.environ["EDGECV_CACHE"] = str(bundle.parent / "cache")  # no verify record from an earlier run applies
    be, info = open_backend(str(bundle), threads=threads)
    out = {f"{EDGECV} ({info['backend']} {info['precision']})": be.infer}
    for t in targets.all_targets():
        if t.host_latency and t.name != info["backend"] and t.backend_class().available()[0]:
            try:
                b2, i2 = open_backend(str(bundle), t.name, "int8", threads=threads)
            except Exception:  # noqa: BLE001 - a bundle without that artefact
                continue
            out[f"edgecv {t.name} int8"] = b2.infer
    return out


def measure_rows(model: str, runs: Dict[str, Callable], x: np.ndarray, y: np.ndarray, one: np.ndarray, args,
                 gmac: float, peak: Dict, meaningful: bool, weights: str, ref: str = "onnxruntime fp32",
                 iters_scale: int = 1) -> List[Dict]:
    # each candidate gets its own input array (a run may bind it in place)
    inputs = {k: one.copy() for k in runs}
    lat = measure_interleaved({k: (lambda f=f, k=k: f(inputs[k])) for k, f in runs.items()}, warmup=args.warmup,
                              iters=args.iters * iters_scale, rounds=20, settle_s=0.05)
    ref_logits = logits_of(runs[ref], x)
    rows = []
    for k, f in runs.items():
        lg = ref_logits if k == ref else logits_of(f, x)
        gps = gmac / (lat[k]["p50_ms"] / 1e3)
        rows.append({"model": model, "weights": weights, "backend": k, **{q: lat[k][q] for q in ("p50_ms", "p90_ms", "p99_ms")},
                     "top1": float((lg.argmax(1) == y).mean()), "top1_meaningful": meaningful,
                     "agreement": float((lg.argmax(1) == ref_logits.argmax(1)).mean()), "n_eval": int(len(y)),
                     "gmac": gmac, "gmac_per_s": gps,
                     "peak_share": gps / peak["gmac_per_s"] if peak.get("gmac_per_s") else None})
    return rows


def trained_like_batchnorm(model, images: np.ndarray, seed: int = 0) -> None:
    """Give a random-weight model's BatchNorm layers what training leaves in them: scales and shifts spread like a
    trained network's, and running statistics of real images (cumulative, in training mode), in place.

    With PyTorch's initial values (mean 0, variance 1, shift 0) every bias folded into a convolution is exactly
    zero, and OpenVINO drops a zero bias: ResNet-18's int8 convolutions then ran with no bias at all for NNCF and
    with two post-ops for edgecv (whose bias correction makes the biases non-zero), a graph no trained model has.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over every batch
        model.train()
        for i in range(0, len(images), 32):
            model(torch.from_numpy(np.ascontiguousarray(images[i:i + 32])))
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.eval()


def bench_model(name: str, args, workdir: Path, peak: Dict) -> List[Dict]:
    import torch

    from edgecv.bundle.reader import open_bundle
    from edgecv.compress.macs import count_macs
    from edgecv.data.folders import read_classes_tsv
    from edgecv.export.data import calib_and_eval_sets, split_off
    from edgecv.export.onnx_export import export_onnx
    from edgecv.export.pipeline import export_bundle
    from edgecv.models import create_model
    from edgecv.models.checkpoint import make_checkpoint, save_checkpoint
    from edgecv.recipe import ExportConfig
    from edgecv.train.sources import data_config_from_spec

    pretrained = name == "efficientnet_lite0"
    model = create_model(name, pretrained=pretrained).eval()
    macs, _ = count_macs(model, (3, 224, 224))
    lite = name.startswith("efficientnet_lite")
    mean, std = ([127 / 255] * 3, [128 / 255] * 3) if lite else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    spec = {"input_size": 224, "resize": 256, "crop": 224, "channels": 3, "mean": mean, "std": std}
    # exactly the export's splits: calibration images for NNCF, the evaluation split for every reported number
    cal, held = calib_and_eval_sets(data_config_from_spec(spec), str(SHARED), str(SHARED), args.calib, args.eval_limit,
                                    show_progress=False)
    if not pretrained:
        trained_like_batchnorm(model, cal.x)
    classes = read_classes_tsv(SHARED / "classes.tsv")[0]
    ckpt = workdir / f"{name}.pt"
    save_checkpoint(make_checkpoint(model, name, {}, classes, spec), ckpt)
    bundle = workdir / f"{name}_bundle"
    # A speed benchmark: the budget only has to let the export through (the 0.5-point / 99% default is refused
    # on these images: issue 13), and each row reports its agreement; random weights: nothing to gate on
    budget = {"max_drop": 1.5, "min_agreement": 0.95} if pretrained else {"max_drop": 100.0, "min_agreement": 0.0}
    t0 = time.time()
    export_bundle(str(ckpt), str(bundle), {"calib": str(SHARED), "eval": str(SHARED), "calib_samples": args.calib,
                                           "calib_method": "percentile" if lite else "minmax",
                                           "eval_limit": args.eval_limit, "corruptions": "none", **budget},
                  show_progress=False)  # robustness is not what this benchmark measures
    export_s = time.time() - t0
    m = open_bundle(bundle).manifest
    _, ev = split_off(held, ExportConfig().tune_fraction, 0)
    assert len(ev) == m["summary"]["evaluation"]["images"], "the evaluation split differs from the export's"
    onnx_fp32 = workdir / f"{name}.onnx"
    export_onnx(model, onnx_fp32, (3, 224, 224))
    torch.set_num_threads(args.threads)

    def torch_run(mod):
        def f(a):
            with torch.inference_mode():
                return mod(torch.from_numpy(a)).numpy()
        return f

    runs: Dict[str, Callable] = {"pytorch eager fp32": torch_run(model)}
    if not args.no_compile:
        runs["torch.compile fp32"] = torch_run(torch.compile(model))
        runs["torch.compile fp32"](ev.x[:1])  # compile now, outside the timed loop
    runs.update(peers(onnx_fp32, cal.x, args.threads, not args.no_nncf))
    runs.update(edgecv_runs(bundle, args.threads))
    rows = measure_rows(name, runs, ev.x, ev.y, np.ascontiguousarray(ev.x[:1]), args, macs / 1e9, peak, pretrained,
                        "ImageNet" if pretrained else "random")
    rows.append({"model": name, "backend": "_export", "export_s": export_s, "cpu_default": m.get("cpu_default"),
                 "budget": budget, "calibration_images": len(cal), "evaluation_images": len(ev)})
    return rows


def bench_fashion(args, peak: Dict) -> List[Dict]:
    """The quickstart bundle (pruned, distilled, int8) against every peer running the unpruned model, on the
    Fashion-MNIST test images the export never calibrated or tuned on."""
    from edgecv.bundle.reader import open_bundle
    from edgecv.compress.macs import count_macs
    from edgecv.data.fashion_mnist import load_fashion_mnist
    from edgecv.export.onnx_export import export_onnx
    from edgecv.models.checkpoint import load_checkpoint
    from edgecv.runtime.preprocess import Preprocessor

    bundle, ckpt = Path(args.fashion_bundle), Path(args.fashion_checkpoint)
    if not (bundle / "manifest.json").exists() or not ckpt.exists():
        return [{"model": "fashion_cnn", "backend": "_skipped", "reason": f"{bundle} or {ckpt} missing: run the README quickstart"}]
    b = open_bundle(bundle)
    model, _ = load_checkpoint(ckpt)
    macs, _ = count_macs(model.eval(), (1, 28, 28))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "unpruned.onnx"
        export_onnx(model, base, (1, 28, 28))
        pre = Preprocessor(b.preprocess)
        xs, ys = load_fashion_mnist("/usr/share/datasets/fashion-mnist", "test")
        tr, _ = load_fashion_mnist("/usr/share/datasets/fashion-mnist", "train")
        n = 10000 if not args.smoke else 500
        x = np.stack([pre(xs[i]) for i in range(n)])
        y = ys[:n]
        calib = np.stack([pre(tr[i]) for i in range(0, 60000, 60000 // 512)][:512])  # training images, like the export
        runs = {f"unpruned {k}": f for k, f in peers(base, calib, args.threads, not args.no_nncf).items()}
        # copy the bundle next to a private cache (no verify record from this machine applies)
        local = Path(tmp) / "bundle"
        shutil.copytree(bundle, local)
        runs.update({f"{k}, pruned": f for k, f in edgecv_runs(local, args.threads).items()})
        rows = measure_rows("fashion_cnn", runs, x, y, np.ascontiguousarray(x[:1]), args, macs / 1e9, peak, True,
                            "trained", ref="unpruned onnxruntime fp32", iters_scale=5)
    pruned_gmac = (b.manifest["summary"].get("prune") or {}).get("macs_after", macs) / 1e9
    for r in rows:
        if r["backend"].endswith(", pruned"):  # the pruned model does fewer MACs: count those it does
            r["gmac"], r["gmac_per_s"] = pruned_gmac, pruned_gmac / (r["p50_ms"] / 1e3)
            r["peak_share"] = r["gmac_per_s"] / peak["gmac_per_s"] if peak.get("gmac_per_s") else None
    return rows


def is_edgecv(backend: str) -> bool:
    return backend.startswith("edgecv")


def verdicts(rows: List[Dict]) -> List[Dict]:
    """Per model: edgecv's default against the fastest peer (ratio = peer p50 / edgecv p50; >= 1.0: edgecv at or
    below the fastest peer)."""
    out = []
    for m in dict.fromkeys(r["model"] for r in rows if not r["backend"].startswith("_")):
        mr = [r for r in rows if r["model"] == m and not r["backend"].startswith("_")]
        edge = next((r for r in mr if r["backend"].startswith(EDGECV)), None)
        others = [r for r in mr if not is_edgecv(r["backend"])]
        if edge is None or not others:
            continue
        peer = min(others, key=lambda r: r["p50_ms"])
        out.append({"model": m, "edgecv": edge["backend"], "edgecv_p50_ms": edge["p50_ms"], "peer": peer["backend"],
                    "peer_p50_ms": peer["p50_ms"], "ratio": peer["p50_ms"] / edge["p50_ms"]})
    return out


def write_outputs(out: Path, rows: List[Dict], meta: Dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ver = verdicts(rows)
    (out / "peers.json").write_text(json.dumps({"meta": meta, "rows": rows, "verdicts": ver}, indent=2))
    peak = meta["int8_peak"]
    lines = [f"# bench_peers ({meta['date']})", "",
             f"CPU: {meta['cpu'].get('model')} ({meta['cpu'].get('cores')} cores; flags {' '.join(meta['cpu'].get('flags', []))}); "
             f"threads {meta['threads']}; foreign CPU load during the run: {meta['foreign_cpu_cores']:.2f} cores on average", "",
             "int8 peak: " + (f"{peak['gmac_per_s']:.0f} GMAC/s ({peak['how']})" if peak.get("gmac_per_s") else peak["how"]), "",
             f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items() if v)}", "",
             "Top-1 and agreement (top-1 equal to ONNX Runtime fp32 on the same model) on the export's evaluation split; "
             "latency batch 1, interleaved rounds.", "",
             "| model | backend | p50 ms | p90 ms | p99 ms | speed-up vs first row | top-1 | agreement with fp32 | GMAC/s | "
             "% of int8 peak |", "|---|---|---|---|---|---|---|---|---|---|"]
    first: Dict[str, float] = {}
    for r in rows:
        if r["backend"].startswith("_"):
            continue
        first.setdefault(r["model"], r["p50_ms"])
        acc = f"{r['top1']:.3f}" + ("" if r["top1_meaningful"] else " (random weights)")
        share = f"{100 * r['peak_share']:.1f}%" if r.get("peak_share") else ""
        name = f"**{r['backend']}**" if r["backend"].startswith(EDGECV) else r["backend"]
        lines.append(f"| {r['model']} | {name} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{first[r['model']] / r['p50_ms']:.2f}x | {acc} | {r['agreement']:.1%} | {r['gmac_per_s']:.1f} | {share} |")
    lines += ["", "edgecv's default CPU artefact against the fastest peer (ratio = peer p50 / edgecv p50):", ""]
    for v in ver:
        lines.append(f"- {v['model']}: {v['edgecv']} {v['edgecv_p50_ms']:.3f} ms vs {v['peer']} {v['peer_p50_ms']:.3f} ms: "
                     f"**{v['ratio']:.2f}x**" + ("" if v["ratio"] >= 1.0 else " (behind)"))
    for r in rows:
        if r["backend"] == "_export":
            lines.append(f"- {r['model']} export: {r['export_s']:.0f} s, budget {r['budget']}, {r['calibration_images']} "
                         f"calibration / {r['evaluation_images']} evaluation images; CPU default: "
                         f"{(r['cpu_default'] or {}).get('reason')}")
        elif r["backend"] == "_skipped":
            lines.append(f"- {r['model']}: skipped ({r['reason']})")
    (out / "peers.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows if not r["backend"].startswith("_")))
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(5 * max(1, len(models)), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        for r in (r for r in rows if r["model"] == m and not r["backend"].startswith("_")):
            ax.scatter(r["p50_ms"], r["agreement"] * 100, s=40, marker="*" if is_edgecv(r["backend"]) else "o")
            ax.annotate(r["backend"], (r["p50_ms"], r["agreement"] * 100), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        ax.set_title(m)
        ax.set_xlabel("p50 latency, ms (batch 1)")
        ax.set_ylabel("top-1 agreement with fp32, %")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "peers.png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientnet_lite0,resnet18,mobilenet_v2")
    ap.add_argument("--out", default="out/bench_peers")
    ap.add_argument("--iters", type=int, default=600)
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
    peak = int8_peak(0.2 if a.smoke else 1.0)
    with tempfile.TemporaryDirectory(prefix="edgecv-peers-") as tmp:
        for m in [m.strip() for m in a.models.split(",") if m.strip()]:
            print(f"[bench_peers] {m} ...", flush=True)
            rows += bench_model(m, a, Path(tmp), peak)
    print("[bench_peers] fashion quickstart ...", flush=True)
    rows += bench_fashion(a, peak)
    wall = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    ours = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    ticks = os.sysconf("SC_CLK_TCK")
    foreign = max(0.0, (busy_jiffies() - busy0) / ticks - ours) / wall
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_info(), "versions": versions(), "threads": a.threads,
            "iters": a.iters, "wall_s": wall, "foreign_cpu_cores": foreign, "smoke": a.smoke, "int8_peak": peak}
    write_outputs(Path(a.out), rows, meta)
    print((Path(a.out) / "peers.md").read_text())
    return 0


if __name__ == "__main__":
    from edgecv.utils import signals

    signals.install()  # SIGTERM as Ctrl-C: the exports' and this run's temporary folders are removed
    try:
        sys.exit(main())
    except signals.INTERRUPTS as e:
        print("[bench_peers] interrupted: no results written", file=sys.stderr)
        sys.exit(signals.exit_code(e))
