"""Write the bundle's index files: labels, preprocessing spec, recipe, report (markdown + PNG), manifest."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Dict, List, Optional

from edgecv import __version__, targets
from edgecv.bundle.manifest import FORMAT_VERSION, manifest_bytes
from edgecv.bundle.names import CALIBRATION_CACHE, FP32_MODEL, LABELS, MANIFEST, PREPROCESS, RECIPE, REPORT_MD, REPORT_PNG, SEEN_IMAGES
from edgecv.data.transforms import preprocess_spec
from edgecv.metrics import SURE, unseen_change_bound
from edgecv.recipe import DataConfig, ExportConfig, Recipe
from edgecv.runtime.tensorrt.compat import TRT_MAX_MAJOR, TRT_MIN
from edgecv.utils.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file


def _versions() -> Dict[str, Optional[str]]:
    out = {"edgecv": __version__, "python": platform.python_version()}
    for mod in ("torch", "onnx", "torch_pruning"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = None
    for t in targets.all_targets():
        out[t.name] = targets.load(t.version)() if t.version else None
    return out


def _io_spec(path: Path) -> Dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {"opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
            "inputs": [{"name": i.name, "shape": dims(i), "dtype": "float32"} for i in m.graph.input],
            "outputs": [{"name": o.name, "shape": dims(o), "dtype": "float32"} for o in m.graph.output]}


def _changes_cell(a: Dict) -> str:
    """How many evaluation images changed class, then in brackets how many of them fp32 was sure of (SURE)."""
    return f"{a['changed']} ({a['changed_fp32_sure']})" if "changed" in a else ""


def write_report(tmp: Path, summary: Dict, artifacts: List[Dict]) -> None:
    lines = ["# edgecv export report", "", f"Source: `{summary['source']}`", ""]
    tune = summary.get("tune") or {}
    lines += ["Every number below is measured on the evaluation split: "
              f"{summary['evaluation']['images']} images from `{summary['evaluation']['source']}`, disjoint from "
              f"the {summary['calibration'].get('images', '?')} calibration images and from the "
              f"{tune.get('images', 0)} tune images that chose the per-layer fallback (by content hash).", ""]
    needed = summary["evaluation"].get("images_to_show_agreement", 0)
    if summary["evaluation"]["images"] < needed:
        n = summary["evaluation"]["images"]
        lines += [f"**Too few evaluation images to show the agreement floor:** with none of {n} changing class, the "
                  f"95% bound on the share that could is still {unseen_change_bound(n):.1%} (3/n); "
                  f"it takes {needed}.", ""]
    lines += ["## Accuracy by stage", "", "| stage | top-1 | top-5 |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['top1']:.4f} | {s['top5']:.4f} |" for s in summary["stages"]]
    lines += ["", "## Artefacts (latency on the export host's CPU, batch 1, 2 threads, median: each CPU target's "
              f"artefact on its own runtime; the others' ONNX on {targets.host_reference().name})", "",
              "| file | target | precision | top-1 | agreement with fp32 | changed class (fp32 sure) | mean KL | "
              "worst class drop | latency ms | fallback layers |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = summary["baseline"]
    source = f"(source fp32 at {summary['input_size']['source']} px)" if summary.get("input_size") else \
        "(unpruned fp32 baseline)"
    lines.append(f"| {source} | {targets.host_reference().name} | fp32 | {base['top1']:.4f} | | | | | "
                 f"{base['latency_ms']:.3f} | |")
    for a in artifacts:
        lines.append(f"| {a['file']} | {a['target']} | {a['precision']} | {a['top1']:.4f} | "
                     f"{a.get('agreement', 1.0):.2%} | {_changes_cell(a)} | {a.get('mean_kl', 0.0):.5f} | "
                     f"{a.get('worst_class_drop', 0.0):.2f} | {a['latency_ms']:.3f} | {len(a['fallback_layers'])} |")
    lines += ["", f"Changed class: evaluation images whose top-1 class the artefact changed; in brackets, those fp32 "
              f"gave at least {SURE:.0%} of its probability (a sure answer overturned, not a near-tie tipped)."]
    for a in artifacts:
        lines += _qat_section(a)
    lines += _by_source(artifacts)
    for a in artifacts:
        lines += _float_layers(a)
    if summary.get("robustness"):
        from edgecv.evaluate.robustness import markdown

        lines += ["", "## Robustness under corruption", ""] + markdown(summary["robustness"])
        if summary["robustness"].get("plot"):
            lines += ["", f"![top-1 by corruption and severity]({summary['robustness']['plot']})"]
    lines += ["", "## Defaults", ""]
    lines += [f"- {t}: `{d['file']}` ({d['reason']})" for t, d in summary["default"].items()]
    if summary.get("cpu_default"):
        c = summary["cpu_default"]
        lines.append(f"- on a CPU (`--backend auto` until `edgecv verify` measures the device): {c['target']} "
                     f"`{c['file']}` ({c['reason']})")
    lines += [f"- {t}: no artefact ({why})" for t, why in (summary.get("targets_skipped") or {}).items()]
    lines += _compression(summary)
    lines += _speed_vs_unpruned_int8(summary, artifacts)
    eng = summary["engine"]
    lines += ["", "## TensorRT engine", "", "built here" if eng.get("built") else f"not built here ({eng['reason']}); {eng['how']}"]
    atomic_write_text(tmp / REPORT_MD, "\n".join(lines) + "\n")
    _plot(tmp / REPORT_PNG, summary, artifacts)


def _macs(part: Dict) -> str:
    return (f"MACs {part['macs_before'] / 1e6:.2f} M -> {part['macs_after'] / 1e6:.2f} M "
            f"({part['mac_reduction']:.2f}x)")


def _compression(summary: Dict) -> List[str]:
    """The report's sections on pruning, removed blocks and the input size, where the export changed them."""
    lines = []
    if summary.get("prune"):
        p = summary["prune"]
        lines += ["", "## Pruning", "", f"{p['ratio']:.0%} of channels by {p.get('method', 'magnitude')}: "
                  f"{_macs(p)}, parameters {p['params_before'] / 1e6:.3f} M -> {p['params_after'] / 1e6:.3f} M; top-1 "
                  f"{p['top1_after_prune']:.4f} right after pruning" + _after_distill(p, "after distillation")]
    if summary.get("depth"):
        d = summary["depth"]
        lines += ["", "## Blocks removed", "", f"{len(d['dropped_blocks'])} of {d['candidates']} residual blocks "
                  f"({', '.join(d['dropped_blocks'])}), those whose removal moved the output on the calibration "
                  f"images least per MAC saved: {_macs(d)}; top-1 {d['top1_after_drop']:.4f} right after"
                  + _after_distill(d, "after distillation")]
    if summary.get("input_size"):
        r = summary["input_size"]
        lines += ["", "## Input size", "", f"The model ships at {r['export']} px (resize {r['resize']}); the source "
                  f"runs at {r['source']} px. Top-1 {r['top1_before_distill']:.4f} at {r['export']} px before "
                  "distillation" + _after_distill(r, "after")]
    return lines


def _after_distill(part: Dict, words: str) -> str:
    """", 0.9512 after distillation (on cpu, mixed precision: bfloat16)", or nothing where there was none."""
    if "top1_after_distill" not in part:
        return ""
    return (f", {part['top1_after_distill']:.4f} {words} (on {part.get('distill_device', 'cpu')}, mixed precision: "
            f"{part.get('distill_mixed_precision', 'off')})")


def _speed_vs_unpruned_int8(summary: Dict, artifacts: List[Dict]) -> List[str]:
    """The report's comparison of a smaller model's artefacts with the unpruned source in int8, per CPU runtime."""
    ref = summary["baseline"].get("int8_latency_ms")
    if not ref:
        return []
    lines = ["", "## Speed against the unpruned model in int8", "",
             "Batch 1 on this CPU, in the same interleaved rounds: each artefact against the unpruned source quantized "
             "all-int8 for the same runtime (timed only; its accuracy is not judged).", "",
             "| target | file | precision | latency ms | unpruned int8 ms | speed-up |", "|---|---|---|---|---|---|"]
    lines += [f"| {a['target']} | {a['file']} | {a['precision']} | {a['latency_ms']:.3f} | {ref[a['target']]:.3f} | "
              f"{a['speedup_vs_unpruned_int8']:.2f}x |" for a in artifacts if a["target"] in ref]
    return lines


def _qat_section(a: Dict) -> List[str]:
    """The report's paragraph on an artefact's QAT rung: why it ran, how it fitted on what, and the fake-quantized
    model's agreement before and after (by distillation: epoch by epoch, and which epoch's weights it ships)."""
    q = a.get("qat")
    if not q:
        return []
    why = ("PTQ and per-layer fallback missed the budget on the tune images" if not q.get("ptq_passed") else
           f"PTQ met the budget on the tune images only with {q['ptq_float_layers']} layer(s) in float")
    head = ["", f"### {a['file']} ({a['target']}): quantization-aware fine-tuning", ""]
    before = f"{q['tune_agreement_fake_quant_before']:.1%} before"
    if q.get("method") == "blocks":
        return head + [f"{why}; block-wise reconstruction of {q['blocks']} blocks, {q['steps_per_block']} Adam steps "
                       f"of {q['batch']} images each (lr {q['lr']:g}), on the {q['images']} calibration images "
                       f"({q['seconds']:.0f} s on {q.get('device', 'cpu')}). Agreement of the fake-quantized model "
                       f"with fp32 on the tune images: {before}, {q['tune_agreement_fake_quant']:.1%} after."]
    kept = q.get("kept_epoch")
    return head + [
        f"{why}; {q['epochs']} epoch(s) of distillation from fp32 on {q['images']} unlabelled images "
        f"(lr {q['lr']}, on {q.get('device', 'cpu')}). Agreement of the fake-quantized model with fp32 on the tune "
        f"images: {before}, then " + ", ".join(f"{h['tune_agreement_fake_quant']:.1%}" for h in q["history"]) + "."
        + (f" The artefact has epoch {kept}'s weights, the best of them." if kept and kept != q["epochs"] else "")]


def _by_source(artifacts: List[Dict]) -> List[str]:
    """The report's table of each int8 artefact's agreement with fp32 on the tune images, by where they came from."""
    rows = [a for a in artifacts if a.get("tune_agreement_by_source")]
    if not rows:
        return []
    names = list(dict.fromkeys(k for a in rows for k in a["tune_agreement_by_source"]))
    header = "| file | target | " + " | ".join(f"{n}, {_images(rows, n)} images" for n in names) + " |"
    lines = ["", "### Agreement with fp32 on the tune images, by source", "", header, "|---|---|" + "---|" * len(names)]
    for a in rows:
        cells = [f"{a['tune_agreement_by_source'][n]['agreement']:.2%}" if n in a["tune_agreement_by_source"] else ""
                 for n in names]
        lines.append(f"| {a['file']} | {a['target']} | " + " | ".join(cells) + " |")
    return lines


def _images(rows: List[Dict], name: str) -> int:
    return next(a["tune_agreement_by_source"][name]["images"] for a in rows if name in a["tune_agreement_by_source"])


def _float_layers(a: Dict) -> List[str]:
    """The report's section on an artefact's layers kept in float, and every count its fallback search tried."""
    if not a["fallback_layers"]:
        return []
    on = a.get("fallback_ranked_on")
    ranked = f", ranked on {on}'s runtime (the same int8 files)" if on and on != a["target"] else ""
    lines = ["", f"### Layers kept in float in {a['file']} ({a['target']})", "",
             f"The most sensitive first (KL to fp32 that keeping each alone in float removes{ranked}):", ""]
    lines += [f"- {f['node']} ({f['sensitivity_gain']:.5f})" for f in a["fallback_layers"]]
    lines += ["", "What the fallback search measured on the tune images:", "",
              "| layers in float | top-1 | agreement | latency ms | within budget |", "|---|---|---|---|---|"]
    return lines + [f"| {t['layers']} | {t['top1']:.4f} | {t['agreement']:.2%} | "
                    + (f"{t['latency_ms']:.3f}" if "latency_ms" in t else "") + f" | {t['within_budget']} |"
                    for t in a.get("fallback_search") or []]


def _plot(path: Path, summary: Dict, artifacts: List[Dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    base = summary["baseline"]
    pts = [("unpruned fp32", base["latency_ms"], base["top1"])]
    pts += [(f"{a['target']} {a['precision']}", a["latency_ms"], a["top1"]) for a in artifacts
            if targets.get(a["target"]).host_latency or a["precision"] == "int8"]
    for label, x, y in pts:
        ax.scatter(x, y * 100, s=40)
        ax.annotate(label, (x, y * 100), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("latency, ms (this CPU, batch 1; TensorRT's ONNX under ONNX Runtime)")
    ax.set_ylabel("top-1 %")
    ax.set_title("accuracy vs latency per export stage")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_bundle(tmp: Path, src, data_cfg: DataConfig, recipe: Optional[Recipe], opts: ExportConfig,
                 artifacts: List[Dict], summary: Dict, stage_times: Dict) -> Dict:
    atomic_write_text(tmp / LABELS, "\n".join(src.classes) + "\n")
    atomic_write_json(tmp / PREPROCESS, preprocess_spec(data_cfg))
    if recipe is not None:
        from edgecv.recipe import save_recipe

        save_recipe(recipe, tmp / RECIPE)
    write_report(tmp, summary, artifacts)
    files = {}
    for f in sorted(tmp.rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            files[str(f.relative_to(tmp))] = {"sha256": sha256_file(f), "size": f.stat().st_size}
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": {"arch": src.arch, "arch_args": src.arch_args, "num_classes": len(src.classes),
                  "pruned": summary.get("prune") is not None},
        **_io_spec(tmp / FP32_MODEL),
        "labels": LABELS,
        "preprocess": PREPROCESS,
        "calibration_cache": CALIBRATION_CACHE if (tmp / CALIBRATION_CACHE).exists() else None,
        "seen_images": SEEN_IMAGES if (tmp / SEEN_IMAGES).exists() else None,
        "versions": _versions(),
        "artifacts": [{k: v for k, v in a.items() if k != "latency"} for a in artifacts],
        "default": summary["default"],
        "cpu_default": summary.get("cpu_default"),
        "golden": summary.get("golden"),
        # what `edgecv build` on the device uses when not told otherwise (export --fp16, --max-batch)
        "build": {"fp16": bool(opts.fp16), "max_batch": int(opts.max_batch)},
        "release": int(opts.release),
        # checked by `edgecv install` on the device (TensorRT majors: what this edgecv's build code supports)
        "compat": {"min_edgecv": __version__, "arch": opts.arch, "tensorrt_major": [TRT_MIN[0], TRT_MAX_MAJOR]},
        "summary": {k: v for k, v in summary.items() if k not in ("default", "cpu_default")},
        "stage_times_s": stage_times,
        "files": files,
    }
    atomic_write_bytes(tmp / MANIFEST, manifest_bytes(manifest))
    return json.loads((tmp / MANIFEST).read_text())
