"""Where edgecv's OpenVINO int8 and NNCF's int8 spend their time, node by node (OpenVINO's performance counters).

    python tools/profile_vs_nncf.py [--model resnet18] [--iters 200] [--out out/profile_vs_nncf]

The model is exported by edgecv exactly as tools/bench_peers.py does (random weights with trained-like BatchNorm
for ResNet-18; the 500 ImageNet samples calibrate both), NNCF quantizes the same fp32 ONNX on the same
calibration images, and both run under OpenVINO with the same settings (2 threads, latency hint, batch 1). The
per-node times are grouped by node type and kernel (``brgconv_avx512_amx_I8``, ``jit_avx512_I8`` ...), so a speed
difference shows where it comes from: different kernels, extra reorders or converts, or the same kernels (parity).
Writes profile.md and profile.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench_peers  # noqa: E402


def export_both(name: str, calib: int, work: Path):
    """edgecv's bundle and NNCF's IR for ``name``: (edgecv OpenVINO int8 file, NNCF xml, one input)."""
    import nncf
    import openvino as ov

    from edgecv.data.folders import read_classes_tsv
    from edgecv.export.data import calib_and_eval_sets
    from edgecv.export.pipeline import export_bundle
    from edgecv.models import create_model, model_cfg
    from edgecv.models.checkpoint import make_checkpoint, save_checkpoint
    from edgecv.train.sources import data_config_from_spec

    cfg = model_cfg(name)
    size, pretrained = cfg["input_size"], name.startswith("efficientnet_lite")
    model = create_model(name, pretrained=pretrained).eval()
    spec = {**cfg, "crop": size, "channels": 3}
    cal, _ = calib_and_eval_sets(data_config_from_spec(spec), str(bench_peers.SHARED), str(bench_peers.SHARED), calib,
                                 None, show_progress=False)
    if not pretrained:
        bench_peers.trained_like_batchnorm(model, cal.x)
    ckpt, bundle = work / "model.pt", work / "bundle"
    save_checkpoint(make_checkpoint(model, name, {}, read_classes_tsv(bench_peers.SHARED / "classes.tsv")[0], spec), ckpt)
    export_bundle(str(ckpt), str(bundle), {"calib": str(bench_peers.SHARED), "eval": str(bench_peers.SHARED),
                                           "calib_samples": calib, "calib_method": "percentile" if pretrained else "minmax",
                                           "corruptions": "none", "max_drop": 100.0, "min_agreement": 0.0,
                                           "targets": ["openvino"]}, show_progress=False)
    onnx_fp32 = bench_peers.export_fp32(model, work / "fp32.onnx", (3, size, size))
    q = nncf.quantize(ov.Core().read_model(str(onnx_fp32)), nncf.Dataset(list(cal.x), lambda a: a[None]),
                      subset_size=len(cal))
    ov.save_model(q, str(work / "nncf.xml"))
    art = json.loads((bundle / "manifest.json").read_text())["artifacts"]
    ours = next(a["file"] for a in art if a["target"] == "openvino" and a["precision"] == "int8")
    return bundle / ours, work / "nncf.xml", np.ascontiguousarray(cal.x[:1])


def by_kernel(prof: Dict) -> Dict[str, Dict]:
    """Per 'node type (kernel)': nodes and mean ms per run."""
    out: Dict[str, Dict] = {}
    for node, times in prof["layers"].items():
        key = prof["ops"][node]
        g = out.setdefault(key, {"nodes": 0, "ms": 0.0})
        g["nodes"] += 1
        g["ms"] += float(np.mean(times))
    return out


def table(ours: Dict, theirs: Dict, run_ms: Dict) -> str:
    keys = sorted(set(ours) | set(theirs), key=lambda k: -max(ours.get(k, {}).get("ms", 0), theirs.get(k, {}).get("ms", 0)))
    lines = [f"Mean wall time per run with counters on: edgecv {run_ms['edgecv']:.3f} ms, NNCF {run_ms['nncf']:.3f} ms", "",
             "| node type (kernel) | edgecv nodes | edgecv ms | NNCF nodes | NNCF ms | difference ms |", "|---|---|---|---|---|---|"]
    for k in keys:
        a, b = ours.get(k, {"nodes": 0, "ms": 0.0}), theirs.get(k, {"nodes": 0, "ms": 0.0})
        lines.append(f"| {k} | {a['nodes']} | {a['ms']:.3f} | {b['nodes']} | {b['ms']:.3f} | {a['ms'] - b['ms']:+.3f} |")
    lines.append(f"| **total of nodes** | {sum(v['nodes'] for v in ours.values())} | {sum(v['ms'] for v in ours.values()):.3f} "
                 f"| {sum(v['nodes'] for v in theirs.values())} | {sum(v['ms'] for v in theirs.values()):.3f} | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--calib", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="out/profile_vs_nncf")
    a = ap.parse_args(argv)
    from edgecv.runtime.backends.cpu import cpu_flags, matrix_units
    from edgecv.runtime.backends.openvino import OpenVinoBackend

    with tempfile.TemporaryDirectory(prefix="edgecv-prof-") as tmp:
        ours_file, nncf_file, x = export_both(a.model, a.calib, Path(tmp))
        profs = {k: OpenVinoBackend(str(f), threads=a.threads).profile_layers(x, a.iters)
                 for k, f in (("edgecv", ours_file), ("nncf", nncf_file))}
    groups = {k: by_kernel(p) for k, p in profs.items()}
    units = matrix_units(cpu_flags())
    head = (f"# {a.model}: edgecv OpenVINO int8 against NNCF int8, per node type and kernel\n\n"
            f"CPU int8 unit: {units['int8']} (AMX: {'yes' if units['int8'] == 'amx_int8' else 'no'}); "
            f"{a.iters} runs, batch 1, {a.threads} threads.\n\n")
    text = head + table(groups["edgecv"], groups["nncf"], {k: p["run_ms"] for k, p in profs.items()})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    bench_peers.write_atomic(out / "profile.md", text)
    bench_peers.write_atomic(out / "profile.json", json.dumps({"model": a.model, "int8_unit": units["int8"], "groups": groups,
                                                  "run_ms": {k: p["run_ms"] for k, p in profs.items()}}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
