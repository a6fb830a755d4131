"""bf16 as a precision of its own on CPUs with bf16 units (AMX, AVX-512 BF16): the fp32 artefact run at bf16 by a
CPU target's runtime that offers it (OpenVINO). Judged like an int8 artefact: within the budget on the tune split,
then measured on the evaluation split; the speed gate then times it beside fp32 and int8, and it becomes a target's
default (or the CPU default) only when it is the fastest within the budget. Where the export host has no bf16, no
bf16 artefact is written, and a device that has bf16 still measures it itself (``edgecv verify``)."""
from __future__ import annotations

import logging
from typing import Dict, Optional

from edgecv import targets
from edgecv.bundle.names import FP32_MODEL
from edgecv.export.gates import backend_logits
from edgecv.metrics import Budget, fidelity, topk_accuracy

log = logging.getLogger("edgecv.export")


def bf16_artefact(run, target: str) -> Optional[Dict]:
    """The bf16 artefact of ``target`` when its runtime runs bf16 here and it is within the budget on the tune split
    (its manifest entry, measured on the evaluation split); else None, with the reason in ``run.summary``."""
    t = targets.get(target)
    cls = t.backend_class()
    if not t.host_latency or not getattr(cls, "has_bf16", None) or not cls.available()[0] or not cls.has_bf16():
        return None
    be = cls.for_file(str(run.fp32_path), threads=2, precision="bf16")[0]
    try:
        acc, agree = run.tune.judge(backend_logits(be, run.tune.inputs()))
        ev = backend_logits(be, run.ev.x)
    finally:
        be.close()
    budget = Budget(run.opts.max_drop, run.opts.min_agreement)
    tried = run.summary.setdefault("bf16", {})
    if not budget.within(run.tune.ref_top1, acc["top1"], agree):
        tried[target] = f"outside the budget on the tune split (top-1 {acc['top1']:.4f}, agreement {agree:.1%})"
        return None
    held = {**topk_accuracy(ev, run.ev.y), **fidelity(run.ref_eval, ev, run.ev.y)}
    held["within_budget"] = budget.within(run.base_acc["top1"], held["top1"], held["agreement"])
    if not held["within_budget"]:
        tried[target] = f"outside the budget on the evaluation split (agreement {held['agreement']:.1%})"
        return None
    tried[target] = f"within the budget: tune agreement {agree:.1%}, evaluation agreement {held['agreement']:.1%}"
    log.info("%s bf16: %s", target, tried[target])
    return {"file": FP32_MODEL, "target": target, "precision": "bf16", **held, "fallback_layers": [], "rung": "bf16",
            "calibration": None}
