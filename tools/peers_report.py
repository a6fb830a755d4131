"""tools/bench_peers.py's report: verdicts with their intervals, peers.md / peers.json / peers.png, and the
comparison of two runs (compare.md). Measures nothing."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List

from machine_peaks import peak_lines

from edgecv.runtime.latency import drift, ratio_interval, speed_verdict
from edgecv.utils.io import atomic_write_text

EDGECV = "edgecv default"  # the backend name of edgecv's default CPU artefact's rows


def is_edgecv(backend: str) -> bool:
    return backend.startswith("edgecv") or ", pruned" in backend


def verdicts(rows: List[Dict]) -> List[Dict]:
    """Per model: edgecv's default against the fastest peer (ratio = peer p50 / edgecv p50, per round), with its
    bootstrap interval, the verdict it supports and how far the reference backend drifted over the rounds."""
    out = []
    for m in dict.fromkeys(r["model"] for r in rows if not r["backend"].startswith("_")):
        mr = [r for r in rows if r["model"] == m and not r["backend"].startswith("_")]
        edge = next((r for r in mr if EDGECV in r["backend"]), None)
        others = [r for r in mr if not is_edgecv(r["backend"])]
        if edge is None or not others:
            continue
        peer = min(others, key=lambda r: r["p50_ms"])
        ci = ratio_interval(peer["round_p50_ms"], edge["round_p50_ms"])
        ref = next((r for r in mr if r.get("reference")), peer)
        out.append({"model": m, "weights": edge["weights"], "edgecv": edge["backend"], "edgecv_p50_ms": edge["p50_ms"],
                    "peer": peer["backend"], "peer_p50_ms": peer["p50_ms"], "ratio": ci["ratio"],
                    "ci": [ci["lo"], ci["hi"]], "confidence": ci["confidence"], "rounds": ci["rounds"],
                    "verdict": speed_verdict(ci["lo"], ci["hi"]), "reference_drift": drift(ref["round_p50_ms"])})
    return out


def compare(old: Dict, new: Dict) -> List[Dict]:
    """Per model in either run: both verdicts and whether the verdict held."""
    o = {v["model"]: v for v in old.get("verdicts", [])}
    n = {v["model"]: v for v in new.get("verdicts", [])}
    out = []
    for m in dict.fromkeys([*o, *n]):
        a, b = o.get(m), n.get(m)
        out.append({"model": m, "old": a and a["verdict"], "new": b and b["verdict"],
                    "old_ratio": a and [a["ratio"], *a["ci"]], "new_ratio": b and [b["ratio"], *b["ci"]],
                    "held": bool(a and b and a["verdict"] == b["verdict"])})
    return out


def compare_md(rows: List[Dict], old_meta: Dict, new_meta: Dict) -> str:
    def ratio(r):
        return f"{r[0]:.2f}x [{r[1]:.2f}, {r[2]:.2f}]" if r else "-"

    lines = [f"# bench_peers: {old_meta.get('date')} against {new_meta.get('date')}", "",
             "| model | old verdict | old ratio [95% CI] | new verdict | new ratio [95% CI] | held |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['old'] or '-'} | {ratio(r['old_ratio'])} | {r['new'] or '-'} | {ratio(r['new_ratio'])} "
              f"| {'yes' if r['held'] else '**no**'} |" for r in rows]
    held = sum(r["held"] for r in rows)
    return "\n".join(lines + ["", f"{held} of {len(rows)} verdicts held."]) + "\n"


def markdown(rows: List[Dict], ver: List[Dict], meta: Dict) -> str:
    cpu = meta["cpu"]
    lines = [f"# bench_peers ({meta['date']})", "",
             f"CPU: {cpu.get('model')} ({cpu.get('cores')} cores; flags {' '.join(cpu.get('flags', []))}); threads "
             f"{meta['threads']}; foreign CPU load during the run: {meta['foreign_cpu_cores']:.2f} cores on average; "
             f"machine drift (fp32 peak, end vs start): {meta['machine_drift']:+.1%}", "",
             "Peaks per precision (GMAC/s, every core at once):", "", *peak_lines(meta), "",
             f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items() if v)}", "",
             "Top-1 and agreement (top-1 equal to ONNX Runtime fp32 on the same model) on the export's evaluation split; "
             f"latency batch 1, {meta['rounds']} interleaved rounds.", "",
             "| model | weights | backend | p50 ms | p90 ms | p99 ms | speed-up vs first row | top-1 | agreement with fp32 "
             "| GMAC/s | % of peak (its precision's unit) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    first: Dict[str, float] = {}
    for r in (r for r in rows if not r["backend"].startswith("_")):
        first.setdefault(r["model"], r["p50_ms"])
        acc = f"{r['top1']:.3f}" + ("" if r["top1_meaningful"] else " (random weights)")
        share = f"{100 * r['peak_share']:.1f}% ({r['peak_unit']})" if r.get("peak_share") else f"({r['precision']}: no peak)"
        name = f"**{r['backend']}**" if EDGECV in r["backend"] else r["backend"]
        lines.append(f"| {r['model']} | {r['weights']} | {name} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{first[r['model']] / r['p50_ms']:.2f}x | {acc} | {r['agreement']:.1%} | {r['gmac_per_s']:.1f} | {share} |")
    lines += ["", "edgecv's default CPU artefact against the fastest peer (ratio = peer p50 / edgecv p50 per round, "
              "geometric mean, 95% bootstrap interval over the rounds; parity band ±5%):", "",
              "| model | edgecv default | fastest peer | ratio | 95% CI | verdict | reference drift over the rounds |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {v['model']} | {v['edgecv']} {v['edgecv_p50_ms']:.3f} ms | {v['peer']} {v['peer_p50_ms']:.3f} ms | "
              f"{v['ratio']:.2f}x | [{v['ci'][0]:.2f}, {v['ci'][1]:.2f}] | **{v['verdict']}** | {v['reference_drift']:.1%} |"
              for v in ver]
    lines.append("")
    for r in rows:
        if r["backend"] == "_export":
            lines.append(f"- {r['model']} export: {r['export_s']:.0f} s, budget {r['budget']}, {r['calibration_images']} "
                         f"calibration / {r['evaluation_images']} evaluation images; CPU default: "
                         f"{(r['cpu_default'] or {}).get('reason')}")
        elif r["backend"] == "_skipped":
            lines.append(f"- {r['model']}: skipped ({r['reason']})")
    return "\n".join(lines) + "\n"


def plot(rows: List[Dict], path: Path) -> None:
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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(out: Path, rows: List[Dict], meta: Dict) -> Dict:
    out.mkdir(parents=True, exist_ok=True)
    ver = verdicts(rows)
    result = {"meta": meta, "rows": rows, "verdicts": ver}
    atomic_write_text(out / "peers.json", json.dumps(result, indent=2))
    atomic_write_text(out / "peers.md", markdown(rows, ver, meta))
    plot(rows, out / "peers.png")
    return result


def read_run(path: str) -> Dict:
    """An earlier run's peers.json; a file that is not one exits 2 (a user error), naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        _refuse(f"{path}: not a readable peers.json ({e})")
    if not isinstance(data, dict) or not isinstance(data.get("verdicts"), list) or \
            any(not isinstance(v, dict) or "verdict" not in v or "ci" not in v for v in data["verdicts"]):
        _refuse(f"{path}: no verdicts with intervals (written by an older bench_peers?)")
    return data


def _refuse(msg: str) -> None:
    print(f"[bench_peers] {msg}", file=sys.stderr)
    raise SystemExit(2)


def write_compare(out: Path, old: Dict, new: Dict) -> str:
    text = compare_md(compare(old, new), old["meta"], new["meta"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.md", text)
    return text
