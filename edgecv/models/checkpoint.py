"""Checkpoints: architecture name and arguments, class names, preprocessing, weights.

Saved as plain tensors and Python literals so they load with ``torch.load(weights_only=True)``;
a checkpoint that needs arbitrary unpickling (a pickled module, a code payload) is refused.
A pruned model (channel counts changed) stores each layer's shape so it can be rebuilt; a depth-pruned one names
the blocks it skips.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from edgecv.errors import CheckpointError  # noqa: F401 (re-exported)
from edgecv.models.blocks import skip_blocks, skipped_blocks
from edgecv.models.registry import create_model
from edgecv.utils.io import SPECIAL, atomic_write_bytes, relative_hint

FORMAT = "edgecv-checkpoint/1"




def layer_shapes(model: nn.Module) -> Dict[str, Dict[str, int]]:
    """Per-layer structural attributes that pruning changes."""
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.BatchNorm2d):
            shapes[name] = {"num_features": m.num_features}
        elif isinstance(m, nn.Linear):
            shapes[name] = {"in_features": m.in_features, "out_features": m.out_features}
    return shapes


def apply_layer_shapes(model: nn.Module, shapes: Dict[str, Dict[str, int]]) -> nn.Module:
    """Resize layers in place to the stored shapes (weights are loaded afterwards)."""
    for name, m in model.named_modules():
        s = shapes.get(name)
        if not s:
            continue
        if isinstance(m, nn.Conv2d):
            m.in_channels, m.out_channels, m.groups = s["in_channels"], s["out_channels"], s["groups"]
            m.weight = nn.Parameter(torch.empty(m.out_channels, m.in_channels // m.groups, *m.kernel_size))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(m.out_channels))
        elif isinstance(m, nn.BatchNorm2d):
            n = m.num_features = s["num_features"]
            if m.affine:
                m.weight, m.bias = nn.Parameter(torch.empty(n)), nn.Parameter(torch.empty(n))
            if m.track_running_stats:
                m.running_mean, m.running_var = torch.zeros(n), torch.ones(n)
        elif isinstance(m, nn.Linear):
            m.in_features, m.out_features = s["in_features"], s["out_features"]
            m.weight = nn.Parameter(torch.empty(m.out_features, m.in_features))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(m.out_features))
    return model


def make_checkpoint(model: nn.Module, arch: str, arch_args: Dict[str, Any], classes: List[str],
                    preprocess: Dict[str, Any], pruned: bool = False, extra: Optional[Dict] = None) -> Dict:
    ckpt = {
        "format": FORMAT,
        "arch": arch,
        "arch_args": dict(arch_args),
        "num_classes": len(classes),
        "classes": list(classes),
        "preprocess": dict(preprocess),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "pruned": pruned,
        "layer_shapes": layer_shapes(model) if pruned else {},
    }
    dropped = skipped_blocks(model)
    if dropped:  # depth-pruned: rebuilt with these blocks skipped before the weights load
        ckpt["skipped_blocks"] = dropped
    if extra:
        ckpt.update(extra)
    return ckpt


def save_checkpoint(ckpt: Dict, path: str | os.PathLike) -> None:
    """Serialise with torch.save into memory, then write atomically."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_checkpoint(path: str | os.PathLike) -> Dict:
    """Load the raw checkpoint dict with ``weights_only=True``; refuse anything else."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found{relative_hint(path)}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint file ({SPECIAL})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(_load_failure(path, e)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an edgecv checkpoint (missing format={FORMAT!r})")
    _check_fields(ckpt, path)
    return ckpt


def _load_failure(path: Path, e: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line: torch's own text advises unsafe loading even
    for a file that is no pickle at all, so only its reason is kept."""
    text = str(e)
    # torch words it "Unsupported global: GLOBAL x" for a class, "unsupported GLOBAL x whose module y is blocked"
    # for os, subprocess and the like: both are a refusal, not damage
    found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", text, re.I)
    if found:
        return (f"{path}: refused: the checkpoint holds {found.group(1)}, which loading with weights_only=True "
                f"does not allow (arbitrary code could run); save plain tensors and containers")
    found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
    reason = found.group(1) if found else (text.splitlines()[0] if text else type(e).__name__)
    reason = reason.strip().split(". ")[0]
    with contextlib.suppress(OSError), open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":  # torch.save's zip container: the file began as a checkpoint
            return f"{path}: a damaged or truncated PyTorch checkpoint ({reason})"
    return f"{path}: not a PyTorch checkpoint ({reason})"


_FIELDS = {"arch": str, "arch_args": dict, "num_classes": int, "classes": list, "preprocess": dict, "state_dict": dict}


def _check_fields(ckpt: Dict, path: Path) -> None:
    """Every field the loader reads, with its type: a damaged checkpoint is named, not a KeyError."""
    for key, tp in _FIELDS.items():
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint field {key!r} is missing")
        if not isinstance(ckpt[key], tp) or isinstance(ckpt[key], bool):
            raise CheckpointError(f"{path}: checkpoint field {key!r}: expected {tp.__name__}, "
                                  f"got {type(ckpt[key]).__name__}")
    if not all(isinstance(c, str) for c in ckpt["classes"]) or len(ckpt["classes"]) != ckpt["num_classes"]:
        raise CheckpointError(f"{path}: checkpoint field 'classes': expected {ckpt['num_classes']} class names "
                              f"(num_classes), got {len(ckpt['classes'])}")
    if ckpt.get("pruned") and not isinstance(ckpt.get("layer_shapes"), dict):
        raise CheckpointError(f"{path}: pruned checkpoint without 'layer_shapes'")
    skipped = ckpt.get("skipped_blocks", [])
    if not isinstance(skipped, list) or not all(isinstance(n, str) for n in skipped):
        raise CheckpointError(f"{path}: checkpoint field 'skipped_blocks': expected a list of module names")


def model_from_checkpoint(ckpt: Dict) -> nn.Module:
    model = create_model(ckpt["arch"], num_classes=ckpt["num_classes"], pretrained=False, **ckpt["arch_args"])
    if ckpt.get("skipped_blocks"):
        skip_blocks(model, ckpt["skipped_blocks"])
    if ckpt.get("pruned"):
        apply_layer_shapes(model, ckpt["layer_shapes"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def load_checkpoint(path: str | os.PathLike) -> Tuple[nn.Module, Dict]:
    """Return ``(model in eval mode, checkpoint dict)``."""
    ckpt = read_checkpoint(path)
    try:
        return model_from_checkpoint(ckpt), ckpt
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        args = f" {ckpt['arch_args']}" if ckpt.get("arch_args") else ""
        raise CheckpointError(f"{path}: weights do not fit architecture {ckpt.get('arch')!r}{args}: "
                              f"{_weights_misfit(e)}") from None


def _weights_misfit(e: Exception) -> str:
    """PyTorch's load_state_dict error (one line per tensor: 30 for a hand-edited width) as one line of counts."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(e).__name__
    parts = []
    for kind in ("Missing", "Unexpected"):
        for line in lines:
            if line.startswith(f"{kind} key(s)"):
                names = line.split(":", 1)[1].split('"')[1::2] or ["?"]
                parts.append(f"{len(names)} {kind.lower()} tensor(s) (first: {names[0]})")
    shapes = [line[len("size mismatch for "):] for line in lines if line.startswith("size mismatch for ")]
    if shapes:
        parts.append(f"{len(shapes)} tensor(s) of another shape (first: {shapes[0]})")
    return "; ".join(parts) or lines[1]
