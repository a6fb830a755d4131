"""Recipes: typed dataclasses loaded from YAML, overridable with ``--set key=value``.

Every unknown key or wrong type fails with a :class:`RecipeError` that names the
file, the dotted key and what was expected, so a typo never trains silently with
a default.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from edgecv.errors import RecipeError
from edgecv.utils.limits import MAX_THREADS
from edgecv.utils.yaml_files import read_yaml_mapping, safe_load_bounded, yaml_problem


def ranged(default: Any = None, *, ge: Optional[float] = None, gt: Optional[float] = None,
           le: Optional[float] = None, lt: Optional[float] = None, **kw) -> Any:
    """A dataclass field whose value (each value, for a list) must lie in a range; checked on load."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if "default_factory" in kw:
        return field(default_factory=kw.pop("default_factory"), metadata={"range": bounds, **kw})
    return field(default=default, metadata={"range": bounds, **kw})


# numpy's generators take no negative seed, torch's none past 64 bits, and a run derives per-epoch seeds from its
# seed (seed * 1000 + epoch): one range, 32 bits as numpy's legacy seeds, that every seed is checked against
SEED_MAX = 2**32 - 1


def seed_field() -> Any:
    """A dataclass field for a random seed (0 to SEED_MAX), checked on load."""
    return ranged(0, ge=0, le=SEED_MAX)


_RANGE_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _check_range(value: Any, bounds: Dict[str, float], where: str) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v is None:
            continue
        ok = all({"ge": v >= b, "gt": v > b, "le": v <= b, "lt": v < b}[k] for k, b in bounds.items())
        infinite = isinstance(v, float) and not math.isfinite(v)  # no setting has a use for inf or NaN
        if not ok or infinite:
            want = " and ".join(f"{_RANGE_TEXT[k]} {b}" for k, b in bounds.items())
            raise RecipeError(f"{where}: must be {'finite and ' if infinite else ''}{want}, got {value!r}")


@dataclass
class ModelConfig:
    name: str = "fashion_cnn"
    pretrained: bool = False
    num_classes: Optional[int] = ranged(None, ge=1)
    args: Dict[str, Any] = field(default_factory=dict)
    # Transfer learning: train only the new head for this many epochs, then unfreeze.
    freeze_backbone_epochs: int = ranged(0, ge=0)


@dataclass
class AugmentConfig:
    random_resized_crop: Optional[List[float]] = ranged(None, gt=0, le=1)  # [min_scale, max_scale]
    random_crop_padding: int = ranged(0, ge=0)
    hflip: float = ranged(0.0, ge=0, le=1)
    rotation: float = ranged(0.0, ge=0, le=180)
    color_jitter: float = ranged(0.0, ge=0, le=1)


@dataclass
class DataConfig:
    kind: str = "fashion_mnist"  # fashion_mnist | image_folder | wnid_folder
    path: str = "/usr/share/datasets/fashion-mnist"
    val_path: Optional[str] = None
    input_size: int = ranged(28, ge=1, le=4096)
    resize: Optional[int] = ranged(None, ge=1, le=8192)  # eval resize of the shorter side; None = input_size
    channels: int = ranged(3, ge=1, le=3)
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # Fraction of the training data held out for evaluation when no val_path/test split exists, chosen by
    # ``split``: "hash" puts an image in the held-out part by its content's sha256 (the same image is on the same side
    # whatever its name, folder order or machine); "index" by a fixed shuffle of the file list (the same whatever
    # train.seed or export.calib_seed, so training, eval and the export hold out the same images).
    holdout: float = ranged(0.0, ge=0, lt=1)
    split: str = "index"
    batch_size: int = ranged(128, ge=1)
    eval_batch_size: int = ranged(256, ge=1)
    workers: int = ranged(0, ge=0, le=MAX_THREADS)
    train_limit: Optional[int] = ranged(None, ge=1)
    # the held-out images each epoch (and `eval RECIPE`, and the export's held-out pool) judge on: N spread evenly
    # over them; None: all (a quick run on a large held-out split)
    val_limit: Optional[int] = ranged(None, ge=1)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    epochs: int = ranged(5, ge=1)
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = ranged(0.05, gt=0)
    momentum: float = ranged(0.9, ge=0, lt=1)
    weight_decay: float = ranged(5e-4, ge=0)
    schedule: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = ranged(0.0, ge=0)
    step_size: int = ranged(30, ge=1)
    gamma: float = ranged(0.1, gt=0)
    label_smoothing: float = ranged(0.0, ge=0, lt=1)
    # mixed precision: float16 on a GPU, bfloat16 on a CPU that computes it natively (AVX512-BF16, AMX: a Lite0 step
    # 2.5x faster than fp32 NCHW, tools/train_speed.py), else off; also distillation's (export --distill)
    amp: bool = True
    seed: int = seed_field()
    # Transfer learning, first: the new head alone, on features of the frozen pretrained backbone computed once over
    # the training images (no augmentation) -- seconds where a frozen epoch through the whole network takes minutes
    head_epochs: int = ranged(0, ge=0)
    head_lr: float = ranged(1e-3, gt=0)
    # "frozen": while fine-tuning, BatchNorm layers keep the pretrained running statistics (their scale and shift
    # still learn); a small dataset in batches of 32 otherwise drags them toward noisy estimates the weights were
    # not trained with
    batchnorm: str = "train"  # train | frozen
    log_format: str = "jsonl"  # jsonl | csv
    threads: Optional[int] = ranged(None, ge=1, le=MAX_THREADS)


CALIB_METHODS = ("minmax", "entropy", "percentile")
# "auto": the export calibrates with each method and keeps, per target, the one that agrees best with fp32 on
# the tune split
CALIB_CHOICES = CALIB_METHODS + ("auto",)
# how `--prune` removes channels (edgecv.compress.prune); "auto": reconstruct where the model has inverted-residual
# blocks, else magnitude
PRUNE_METHODS = ("auto", "reconstruct", "magnitude")
# pruned channel counts are multiples of this: ONNX Runtime's int8 convolutions take their fast path only at
# multiples of 16 (a reconstruct-pruned Lite0 at multiples of 8 ran no faster than the unpruned int8;
# tools/prune_rounding.py, docs/pruning.md)
PRUNE_ROUND_TO = 16
# how int8 weights are rounded (edgecv.export.gptq): gptq on the calibration images, or to the nearest step
WEIGHT_ROUNDINGS = ("gptq", "nearest")
# how the int8 ladder's QAT rung fits (edgecv.export.qat_rung): block-wise reconstruction, end-to-end distillation,
# or "auto": blocks where the network cuts into blocks (edgecv.compress.blockwise), else distill
QAT_METHODS = ("auto", "blocks", "distill")


def _target_names() -> List[str]:
    from edgecv import targets

    return targets.exportable()[0]


@dataclass
class ExportConfig:
    int8: bool = True
    fp16: bool = False
    prune: float = ranged(0.0, ge=0, lt=1)
    prune_round_to: int = ranged(PRUNE_ROUND_TO, ge=1)
    prune_method: str = "auto"  # PRUNE_METHODS
    # residual blocks removed whole (edgecv.compress.depth), before --prune
    drop_blocks: int = ranged(0, ge=0, le=64)
    # the shipped model's input size (square), distilled from the source at its own: None = the recipe's data.input_size
    input_size: Optional[int] = ranged(None, ge=8, le=4096)
    distill: bool = False
    distill_epochs: int = ranged(1, ge=1)
    distill_lr: float = ranged(0.01, gt=0)
    distill_optimizer: str = "sgd"  # sgd (Nesterov momentum) | adamw; either with a one-cycle rate
    temperature: float = ranged(4.0, gt=0)
    alpha: float = ranged(0.7, ge=0, le=1)
    calib: Optional[str] = None
    calib_samples: int = ranged(256, ge=1)
    calib_method: str = "minmax"  # minmax | entropy | percentile
    calib_seed: int = seed_field()
    bias_correction: bool = True  # int8 layers' biases corrected for weight rounding (edgecv.export.bias_correction)
    weight_rounding: str = "nearest"  # WEIGHT_ROUNDINGS; gptq needs no bias correction (it removes that shift too)
    calib_set: Optional[str] = field(default=None, metadata={"internal": True})  # the calibration/*.yaml used
    # that set when it draws on pools (edgecv.export.calibration_set.CalibrationSet)
    calib_pools: Optional[Any] = field(default=None, metadata={"internal": True})
    max_drop: float = ranged(1.0, ge=0, le=100)
    targets: List[str] = field(default_factory=lambda: _target_names())
    eval: Optional[str] = None
    eval_limit: Optional[int] = ranged(2000, ge=1)
    max_batch: int = ranged(8, ge=1, le=4096)  # the largest batch the device engine is built for
    release: int = ranged(0, ge=0)  # monotonic release number: devices refuse to install a lower or equal one
    arch: Optional[List[str]] = None  # CPU architectures the bundle is for (None: any)
    tune_fraction: float = ranged(0.3, gt=0, lt=1)  # held-out images used to choose fallback layers
    golden: int = ranged(64, ge=1, le=4096)  # golden vectors shipped for `edgecv verify` on the device
    min_agreement: float = ranged(0.99, ge=0, le=1)  # fidelity budget: top-1 agreement with fp32
    opset: int = ranged(17, ge=13, le=21)
    # robustness report (edgecv.evaluate.robustness): corruptions ("all", families, names; "none": no report)
    # the ladder's last rung: quantization-aware distillation when PTQ and fallback miss the budget (0: off)
    qat_epochs: int = ranged(3, ge=0, le=100)
    qat_lr: float = ranged(1e-4, gt=0, le=1)  # SGD; 1e-3 diverged on Lite0 after one epoch
    qat_method: str = "auto"  # QAT_METHODS
    qat_block_steps: int = ranged(60, ge=1, le=100000)  # Adam steps of 32 images per block (blocks method)
    corruptions: str = "all"
    corruption_severities: str = "1-5"
    corruption_images: int = ranged(100, ge=1)  # evaluation images corrupted (N spread over the split)
    max_corruption_drop: Optional[float] = ranged(None, ge=0)  # budget: worst corruption's extra drop, points


@dataclass
class Recipe:
    name: str = "recipe"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    checkpoint: Optional[str] = None  # where a trained checkpoint for this recipe lives
    source: Optional[str] = field(default=None, metadata={"internal": True})


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected bool (true/false), got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: expected float, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: expected int, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected str, got {value!r}")
        return value
    raise RecipeError(f"{where}: unsupported type {_type_name(tp)}")


def _build(cls, data: Dict[str, Any], where: str):
    """``where`` is "file: key.path" (the prefix of every error message)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    sep = "" if where.endswith(": ") else "."
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if not isinstance(k, str) or k not in names:
            raise RecipeError(f"{where}{sep}{k}: unknown key (expected one of: {', '.join(sorted(names))})")
    for name, f in fields.items():  # a field without a default (a pool's images) must be given
        if name in names and name not in data and f.default is MISSING and f.default_factory is MISSING:
            raise RecipeError(f"{where}{sep}{name}: required")
    values = {}
    for k, v in data.items():
        values[k] = _coerce(v, hints[k], f"{where}{sep}{k}")
        if fields[k].metadata.get("range"):
            _check_range(values[k], fields[k].metadata["range"], f"{where}{sep}{k}")
    return cls(**values)


def _parse_scalar(text: str, item: str) -> Any:
    if any("\udc80" <= ch <= "\udcff" for ch in text):
        return text  # a path with bytes that are not UTF-8 (Python's surrogate escapes): YAML cannot hold it, keep it
    try:
        return safe_load_bounded(text, f"--set {item!r}") if text != "" else ""
    except yaml.YAMLError as e:
        raise RecipeError(f"--set {item!r}: the value is not valid YAML ({yaml_problem(e)}); quote strings, e.g. "
                          "key='a: b'") from None


def apply_overrides(raw: Dict[str, Any], overrides: List[str], source: str = "--set") -> Dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a raw recipe mapping."""
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"{source} {item!r}: expected key=value, e.g. train.epochs=3")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if node is None:
                node = {}
            if not isinstance(node, dict):
                raise RecipeError(f"{source} {key}: '{p}' is not a section")
        if not all(parts):
            raise RecipeError(f"{source} {item!r}: empty key part in {key!r}")
        node[parts[-1]] = _parse_scalar(text, item)
    return raw


def recipe_from_dict(raw: Dict[str, Any], source: str = "<dict>", overrides: List[str] = ()) -> Recipe:
    """Build a validated :class:`Recipe` from a mapping (plus optional overrides)."""
    raw = apply_overrides(dict(raw or {}), list(overrides))
    recipe = _build(Recipe, raw, f"{source}: ")
    recipe.source = source
    _validate(recipe, source)
    return recipe


def check_ranges(obj: Any, flag_style: bool = False, where: str = "") -> None:
    """Re-check the ranges of a dataclass instance changed after loading (e.g. by command-line flags);
    errors name the flag (``--max-drop``) or the key."""
    for f in dataclasses.fields(obj):
        if f.metadata.get("range"):
            name = f"--{f.name.replace('_', '-')}" if flag_style else f"{where}{f.name}"
            v = getattr(obj, f.name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, list))):
                raise RecipeError(f"{name}: expected a number, got {v!r}")
            _check_range(v, f.metadata["range"], name)


def _validate(r: Recipe, source: str) -> None:
    choices = {
        "data.kind": (r.data.kind, {"fashion_mnist", "image_folder", "wnid_folder"}),
        "data.split": (r.data.split, {"index", "hash"}),
        "train.optimizer": (r.train.optimizer, {"sgd", "adamw"}),
        "train.schedule": (r.train.schedule, {"cosine", "step", "constant"}),
        "train.log_format": (r.train.log_format, {"jsonl", "csv"}),
        "train.batchnorm": (r.train.batchnorm, {"train", "frozen"}),
        "export.calib_method": (r.export.calib_method, set(CALIB_CHOICES)),
        "export.prune_method": (r.export.prune_method, set(PRUNE_METHODS)),
        "export.weight_rounding": (r.export.weight_rounding, set(WEIGHT_ROUNDINGS)),
        "export.qat_method": (r.export.qat_method, set(QAT_METHODS)),
        "export.distill_optimizer": (r.export.distill_optimizer, {"sgd", "adamw"}),
    }
    for key, (val, allowed) in choices.items():
        if val not in allowed:
            raise RecipeError(f"{source}: {key}: expected one of {sorted(allowed)}, got {val!r}")
    from edgecv import targets

    for t in r.export.targets:
        if t not in targets.names():
            raise RecipeError(f"{source}: export.targets: unknown target {t!r} "
                              f"(expected one of: {', '.join(targets.names())})")
    if r.export.max_drop < 0:
        raise RecipeError(f"{source}: export.max_drop: must be >= 0, got {r.export.max_drop}")
    if not 0 <= r.export.prune < 1:
        raise RecipeError(f"{source}: export.prune: expected a ratio in [0, 1), got {r.export.prune}")
    if r.data.channels not in (1, 3):
        raise RecipeError(f"{source}: data.channels: expected 1 or 3, got {r.data.channels}")
    if len(r.data.mean) != r.data.channels or len(r.data.std) != r.data.channels:
        raise RecipeError(f"{source}: data.mean/data.std: expected {r.data.channels} values (data.channels)")
    if any(not s > 0 for s in r.data.std):
        raise RecipeError(f"{source}: data.std: every value must be > 0, got {r.data.std}")
    if r.data.resize is not None and r.data.resize < r.data.input_size:
        raise RecipeError(f"{source}: data.resize: {r.data.resize} is smaller than data.input_size "
                          f"{r.data.input_size} (the centre crop must fit)")
    rrc = r.data.augment.random_resized_crop
    if rrc is not None and (len(rrc) != 2 or rrc[0] > rrc[1]):
        raise RecipeError(f"{source}: data.augment.random_resized_crop: expected [min, max] with min <= max, "
                          f"got {rrc}")
    _check_against_each_other(r, source)


def _check_against_each_other(r: Recipe, source: str) -> None:
    """Values each within range that cannot go together: the run would train nothing it was asked to."""
    if r.model.freeze_backbone_epochs > r.train.epochs:
        raise RecipeError(f"{source}: model.freeze_backbone_epochs: {r.model.freeze_backbone_epochs} is more than "
                          f"train.epochs {r.train.epochs} (the backbone would never train)")
    if r.train.warmup_epochs > r.train.epochs:
        raise RecipeError(f"{source}: train.warmup_epochs: {r.train.warmup_epochs:g} is more than train.epochs "
                          f"{r.train.epochs} (the rate would never reach train.lr)")


SOURCE_KINDS = "a recipe .yaml or a checkpoint .pt"  # what a model SOURCE argument names (is_recipe tells which)


def is_recipe(path: str) -> bool:
    """Whether SOURCE names a recipe (else a checkpoint), by its suffix."""
    return Path(path).suffix.lower() in (".yaml", ".yml")


def load_recipe(path: str | os.PathLike, overrides: List[str] = ()) -> Recipe:
    """Load and validate a YAML recipe. Relative data paths resolve against the working directory."""
    path = Path(path)
    raw = read_yaml_mapping(path, "recipe")
    raw.setdefault("name", path.stem)
    return recipe_from_dict(raw, str(path), overrides)


def _public_dict(obj) -> Dict[str, Any]:
    """``dataclasses.asdict`` without the fields marked internal (they are not recipe keys)."""
    out = {}
    for f in dataclasses.fields(obj):
        if f.metadata.get("internal"):
            continue
        v = getattr(obj, f.name)
        out[f.name] = _public_dict(v) if dataclasses.is_dataclass(v) else copy.deepcopy(v)
    return out


def recipe_to_dict(recipe: Recipe) -> Dict[str, Any]:
    return _public_dict(recipe)


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    """Write the resolved recipe (atomically) beside an artefact."""
    from edgecv.utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
