"""What the export decides once every artefact is measured: refuse (a budget missed), or each target's default
and the CPU default."""
from __future__ import annotations

from typing import Dict, List, Optional

from edgecv import targets
from edgecv.errors import ExportError
from edgecv.recipe import ExportConfig


def refuse_if(failures: List[str]) -> None:
    """The export's refusal: every budget missed, and no bundle written."""
    if failures:
        raise ExportError("accuracy gate failed, no bundle written: " + " | ".join(failures))


def corruption_failures(rep: Dict, opts: ExportConfig) -> List[str]:
    if opts.max_corruption_drop is None:
        return []
    out = []
    for k, s in rep["summary"].items():
        if k.endswith(("int8", "bf16")) or "int8 " in k:
            if s["worst_extra_drop"] > opts.max_corruption_drop:
                out.append(f"{k} under {s['worst']}: {s['worst_extra_drop']:.2f} points below fp32 beyond its clean "
                           f"drop (budget --max-corruption-drop {opts.max_corruption_drop}, {rep['images']} images)")
    return out


def choose_cpu_default(artifacts: List[Dict], default: Dict) -> Optional[Dict]:
    """Across the targets whose export-host latency is their device latency (the CPU runtimes), the fastest
    default: what ``--backend auto`` runs on a CPU host until ``edgecv verify`` measures the device itself."""
    cands = [(t, d) for t, d in default.items() if targets.get(t).host_latency]
    if not cands:
        return None
    lat = {(a["target"], a["file"]): a["latency_ms"] for a in artifacts}
    t, d = min(cands, key=lambda c: lat[(c[0], c[1]["file"])])
    others = ", ".join(f"{o} {d2['precision']} {lat[(o, d2['file'])]:.3f} ms" for o, d2 in cands if o != t)
    return {"target": t, "file": d["file"], "precision": d["precision"],
            "reason": f"{t} {d['precision']} {lat[(t, d['file'])]:.3f} ms" + (f" < {others}" if others else "")}


def choose_defaults(artifacts: List[Dict], ref_top1: float, max_drop: float) -> Dict:
    """Per target, the fastest artefact within the accuracy budget (fp32, int8, and bf16 where measured); an int8 or
    bf16 artefact slower than fp32 is not the default. A target whose speed is measured on the device (TensorRT)
    defaults to its explicit int8."""
    default = {}
    for target in sorted({a["target"] for a in artifacts}):
        arts = [a for a in artifacts if a["target"] == target]
        fp32 = next(a for a in arts if a["precision"] == "fp32")
        int8 = next((a for a in arts if a["precision"] == "int8"), None)
        if not targets.get(target).host_latency:
            pick, why = (int8, f"explicit int8 Q/DQ ({target} latency is measured on the device: edgecv verify)") \
                if int8 else (fp32, "no int8 artefact")
        else:
            pick = min(arts, key=lambda a: (a["latency_ms"], a["precision"] != "fp32"))
            others = ", ".join(f"{a['precision']} {a['latency_ms']:.3f} ms" for a in arts if a is not pick)
            why = f"{pick['precision']} {pick['latency_ms']:.3f} ms, the fastest" + (f" (vs {others})" if others else "")
            if pick is not fp32:
                why += f"; top-1 {pick['top1']:.4f} within {max_drop} points of {ref_top1:.4f}"
        default[target] = {"file": pick["file"], "precision": pick["precision"], "reason": why}
    return default
