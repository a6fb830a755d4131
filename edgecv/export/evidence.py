"""What an export leaves in the bundle for judging the model later: the golden vectors ``edgecv verify`` runs on
the device, and the robustness report under corruption. Both take their images spread over the evaluation split."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from edgecv import targets
from edgecv.bundle.names import CORRUPTIONS_PNG, FP32_MODEL, GOLDEN
from edgecv.metrics import Budget
from edgecv.recipe import ExportConfig


def write_golden_vectors(tmp: Path, fp32_path: Path, ev, spec: Dict, opts: ExportConfig) -> Dict:
    """``opts.golden`` evaluation images spread over the split (it lists them class by class), their labels and the
    fp32 ONNX's logits (edgecv verify)."""
    from edgecv.bundle.golden import to_inputs, to_pixels, write_golden
    from edgecv.export.gates import onnx_logits
    from edgecv.utils.sampling import evenly_spaced

    pick = evenly_spaced(len(ev), opts.golden)
    pixels = to_pixels(ev.x[pick], spec)
    logits = onnx_logits(fp32_path, to_inputs(pixels, spec))
    write_golden(tmp / GOLDEN, pixels, ev.y[pick], logits)
    return {"file": GOLDEN, "n": len(pick), "reference": fp32_path.name,
            "budget": Budget(opts.max_drop, opts.min_agreement).to_dict()}


def robustness(tmp: Path, unpruned: Optional[Path], artifacts: List[Dict], ev, spec: Dict, opts: ExportConfig,
               show_progress: bool) -> Dict:
    """The corruption report of the shipped fp32 model (the reference), each int8 artefact on the runtime that
    judges it here, and the unpruned source when pruned; writes corruptions.png into the bundle."""
    from edgecv.bundle.golden import to_pixels
    from edgecv.data.corruptions import parse_names, severities
    from edgecv.evaluate.robustness import corruption_report, plot
    from edgecv.export.gates import host_backend
    from edgecv.utils.sampling import evenly_spaced

    pick = evenly_spaced(len(ev), opts.corruption_images)  # the split lists its images class by class
    backends = {"fp32": host_backend(tmp / FP32_MODEL)}
    if unpruned is not None:
        backends["unpruned fp32"] = host_backend(unpruned)
    for a in artifacts:
        if a["precision"] in ("int8", "bf16"):
            t = targets.get(a["target"])
            label = f"{t.name} {a['precision']}" + ("" if t.host_latency else " (on ONNX Runtime)")
            backends[label] = host_backend(tmp / a["file"], t, precision=a["precision"])
    try:
        rep = corruption_report({k: be.infer for k, be in backends.items()}, "fp32", to_pixels(ev.x[pick], spec),
                                ev.y[pick], spec, parse_names(opts.corruptions), severities(opts.corruption_severities),
                                seed=opts.calib_seed, show_progress=show_progress)
    finally:
        for be in backends.values():
            be.close()
    if plot(rep, tmp / CORRUPTIONS_PNG):
        rep["plot"] = CORRUPTIONS_PNG
    return rep
