"""On-device TensorRT engine build and cache.

An engine is tied to one TensorRT version and one GPU, so the bundle ships ONNX and the device builds.
Cached engines are keyed by everything that changes the plan: model sha256, TensorRT version, GPU name and
compute capability, precision, fp16 kernels, DLA core, batch range, workspace and builder optimisation level.
The key is stored beside the engine and checked before every load, so an engine built for another key is
never deserialized: it is rebuilt, with a message saying why. Builds with different settings get their own
slots. One timing cache per (TensorRT version, compute capability) is shared by every model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Optional, Tuple

from edgecv.errors import DeviceError
from edgecv.runtime.tensorrt.compat import (
    device_key,
    explicit_batch_flags,
    has_builder,
    has_calibrators,
    has_precision_flags,
    import_tensorrt,
    trt_available,
)
from edgecv.utils.cache import cache_dir, writable_cache_dir
from edgecv.utils.io import SPECIAL, atomic_write_bytes, atomic_write_json, read_small

log = logging.getLogger("edgecv.build")


def default_cache_dir() -> Path:
    return cache_dir("engines")


@dataclass(frozen=True)
class BuildSettings:
    """How an engine is built, besides the model and its precision: what ``edgecv build`` is told (None: what the
    export recorded in the manifest's ``build``)."""

    fp16: Optional[bool] = None  # fp16 kernels allowed besides the precision's own
    dla_core: int = -1
    max_batch: Optional[int] = None  # optimisation profile 1..max_batch (DLA: static)
    workspace_mb: int = 1024
    opt_level: int = -1  # builder optimisation level (TensorRT >= 8.6); -1: TensorRT's default
    timing_cache: Optional[Path] = None  # default: one per TensorRT version and compute capability
    cache_dir: Optional[Path] = None  # default: the engine cache (edgecv.utils.cache)


def _settings(settings: Optional[BuildSettings], fields: Dict) -> BuildSettings:
    return replace(settings or BuildSettings(), **fields)


@dataclass(frozen=True)
class EngineKey:
    model_sha256: str
    trt_version: str
    gpu: str
    compute_capability: str
    precision: str  # fp32 | fp16 | int8-qdq | int8-calib
    dla_core: int = -1
    fp16: bool = False  # fp16 kernels allowed besides the precision's own
    max_batch: int = 8  # optimisation profile 1..max_batch (DLA: static at max_batch)
    workspace_mb: int = 1024
    opt_level: int = -1  # builder optimisation level (TensorRT >= 8.6); -1: TensorRT's default

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]

    def slot(self) -> str:
        """What stays the same for one model and build request on any device: finds stale engines."""
        settings = hashlib.sha256(json.dumps([self.fp16, self.max_batch, self.workspace_mb, self.opt_level])
                                  .encode()).hexdigest()[:8]
        return f"{self.model_sha256[:16]}-{self.precision}-dla{self.dla_core}-{settings}"

    def differences(self, other: "EngineKey") -> Dict[str, Tuple]:
        a, b = asdict(self), asdict(other)
        return {k: (b[k], a[k]) for k in a if a[k] != b[k]}


def lookup(cache_dir: Path, key: EngineKey) -> Tuple[Optional[Path], str]:
    """(engine path, "") on a hit; (None, why) on a miss, naming what changed when a stale engine exists."""
    meta = cache_dir / f"{key.slot()}.json"
    engine_file = cache_dir / f"{key.slot()}.engine"
    if not meta.exists() or not engine_file.exists():
        return None, "no cached engine"
    try:
        stored = EngineKey(**json.loads(meta.read_text())["key"])
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        return None, f"cache metadata {meta} unreadable ({type(e).__name__})"
    if stored != key:
        diff = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in key.differences(stored).items())
        return None, f"cached engine was built for another key ({diff}): rebuilding"
    want = json.loads(meta.read_text()).get("engine_sha256")
    if want and hashlib.sha256(engine_file.read_bytes()).hexdigest() != want:
        return None, f"{engine_file}: checksum mismatch: rebuilding"
    return engine_file, ""


def store(cache_dir: Path, key: EngineKey, plan: bytes, build_info: Dict) -> Path:
    """Write engine then metadata atomically (metadata last: a crash in between leaves a miss, not a bad hit)."""
    if cache_dir == default_cache_dir():
        writable_cache_dir("engines")  # named with the variable that moves it when it cannot be used
    cache_dir.mkdir(parents=True, exist_ok=True)
    engine_file = cache_dir / f"{key.slot()}.engine"
    atomic_write_bytes(engine_file, plan)
    atomic_write_json(cache_dir / f"{key.slot()}.json",
                      {"key": asdict(key), "engine_sha256": hashlib.sha256(plan).hexdigest(), "build": build_info})
    return engine_file


def profile_shapes(shape, max_batch: int, dla_core: int = -1):
    """(min, opt, max) input shapes: batch 1..max_batch, or static at max_batch on DLA (DLA needs static
    shapes: a dynamic 1/1/8 profile fails there)."""
    rest = tuple(shape[1:])
    if dla_core >= 0:
        return (max_batch,) + rest, (max_batch,) + rest, (max_batch,) + rest
    return (1,) + rest, (1,) + rest, (max_batch,) + rest


def check_dla_precision(precision: str, fp16: bool, dla_core: int) -> None:
    if dla_core >= 0 and precision == "fp32" and not fp16:
        raise DeviceError("DLA runs fp16 or int8 only: build with --int8 or --fp16 (an fp32 build would run "
                          "entirely on the GPU fallback)")


def make_progress_monitor(trt):
    """An IProgressMonitor (TensorRT >= 10) that logs each build phase as it starts and ends."""

    class PhaseLog(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            log.info("build: %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name, step):
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            log.debug("build: %s done", phase_name)

    return PhaseLog()


def timing_cache_path(cache_dir: Path, key: "EngineKey") -> Path:
    """One timing cache per TensorRT version and compute capability, shared by every model built there."""
    return cache_dir / f"timing-trt{key.trt_version}-sm{key.compute_capability.replace('.', '')}.cache"


def build_plan(onnx_path: Path, precision: str, settings: BuildSettings, calib_cache: Optional[bytes] = None) -> bytes:
    """Parse ONNX and build a serialized engine with TensorRT's builder (8.5+ API only)."""
    fp16, dla_core, max_batch = bool(settings.fp16), settings.dla_core, settings.max_batch or 8
    workspace_mb, opt_level, timing_cache = settings.workspace_mb, settings.opt_level, settings.timing_cache
    check_dla_precision(precision, fp16, dla_core)
    trt = import_tensorrt()
    if trt is None or not has_builder(trt):
        raise DeviceError("this TensorRT install has no builder (the lean runtime cannot build engines)")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    qdq = precision == "int8-qdq"
    strongly_typed = qdq and not has_precision_flags(trt)  # TensorRT 11: Q/DQ networks are strongly typed
    network = builder.create_network(explicit_batch_flags(trt, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DeviceError(f"{onnx_path}: TensorRT's ONNX parser failed: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    if shape[0] == -1:
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, *profile_shapes(shape, max_batch, dla_core))
        config.add_optimization_profile(profile)
    if opt_level >= 0 and hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = opt_level
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = make_progress_monitor(trt)
    if has_precision_flags(trt):
        if precision.startswith("int8"):
            config.set_flag(trt.BuilderFlag.INT8)
        if fp16 or precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "fp16" or fp16:
        raise DeviceError(f"TensorRT {trt.__version__} has no FP16 builder flag: export an fp16 ONNX instead")
    if precision == "int8-calib":
        if not has_calibrators(trt):
            raise DeviceError(f"TensorRT {trt.__version__} removed calibrator-based int8: use the Q/DQ ONNX "
                              "(edgecv build BUNDLE --int8 without --dla)")
        if not calib_cache:
            raise DeviceError("implicit int8 needs the bundle's calibration.cache")
        from edgecv.runtime.tensorrt.calibrator import make_entropy_calibrator

        config.int8_calibrator = make_entropy_calibrator(trt, cache=calib_cache)
    if dla_core >= 0:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(read_small(timing_cache, 1 << 30) if timing_cache.exists() else b"")
        config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DeviceError(f"{onnx_path}: TensorRT failed to build the engine (see the log above)")
    if cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def plan_for_bundle(bundle, int8: bool, dla_core: int = -1, fp16: bool = False, calib: bool = False) -> Tuple[str, str]:
    """Which ONNX to build and how: (file, precision). DLA and TensorRT < 8.6-style deployments use the
    fp32 ONNX + calibration cache (implicit int8); otherwise the explicit Q/DQ ONNX."""
    fp32_file = bundle.artifact("tensorrt", "fp32")["file"]
    if not int8:
        return fp32_file, "fp16" if fp16 else "fp32"
    if dla_core >= 0 or calib:
        if not bundle.manifest.get("calibration_cache"):
            raise DeviceError(f"{bundle.root}: DLA int8 needs a calibration cache; this bundle has none")
        return fp32_file, "int8-calib"
    art = bundle.artifact("tensorrt", "int8")
    return art["file"], "int8-qdq"


def engine_key_for(bundle, file: str, precision: str, settings: Optional[BuildSettings] = None,
                   device: Optional[dict] = None, trt_version: Optional[str] = None, **fields) -> EngineKey:
    """Everything that changes the plan: the model's sha256, TensorRT, GPU, precision and the build settings."""
    s = _settings(settings, fields)
    if trt_version is None:
        trt = import_tensorrt()
        trt_version = getattr(trt, "__version__", "none")
    dev = device or device_key() or {"gpu": "none", "compute_capability": "0.0"}
    return EngineKey(bundle.manifest["files"][file]["sha256"], trt_version, dev["gpu"], dev["compute_capability"],
                     precision, s.dla_core, bool(s.fp16), int(s.max_batch or 8), int(s.workspace_mb),
                     int(s.opt_level))


def build_request(bundle, precision: str = "int8", fp16: Optional[bool] = None, dla_core: int = -1,
                  max_batch: Optional[int] = None) -> Tuple[str, str, bool, int]:
    """(file, engine precision, fp16, max batch) for a request, with what export recorded filling the gaps:
    ``export --fp16`` allows fp16 kernels, and the batch sizes declared at export size the profile."""
    build = bundle.manifest.get("build") if isinstance(bundle.manifest.get("build"), dict) else {}
    if fp16 is None:
        fp16 = bool(build.get("fp16", False))
    if max_batch is None:
        max_batch = 1 if dla_core >= 0 else int(build.get("max_batch", 8))
    want_fp16 = precision == "fp16"
    file, prec = plan_for_bundle(bundle, precision.startswith("int8"), dla_core, fp16=want_fp16,
                                 calib=precision == "int8-calib")
    check_dla_precision(prec, fp16 or want_fp16, dla_core)
    return file, prec, bool(fp16 or want_fp16), max_batch


def check_timing_cache(path: str | os.PathLike) -> None:
    """``--timing-cache``: a regular file, or a new one in an existing folder. The build reads it, then replaces it
    with its own: ``/dev/zero`` would be read for ever and, as root, replaced by a file."""
    p = Path(path)
    if p.exists() and not p.is_file():
        what = "a folder" if p.is_dir() else SPECIAL
        raise DeviceError(f"--timing-cache {path}: {what}, not a timing cache file")
    if not p.parent.is_dir():
        raise DeviceError(f"--timing-cache {path}: folder {p.parent} does not exist")


def engine_for_bundle(bundle, precision: str = "int8", settings: Optional[BuildSettings] = None,
                      **fields) -> Tuple[Path, EngineKey]:
    """The cached engine for this bundle and device, building it when the key does not match."""
    s = _settings(settings, fields)
    file, prec, fp16, max_batch = build_request(bundle, precision, s.fp16, s.dla_core, s.max_batch)
    s = replace(s, fp16=fp16, max_batch=max_batch)
    if s.timing_cache is not None:
        check_timing_cache(s.timing_cache)
    ok, why = trt_available()
    if not ok:
        raise DeviceError(f"cannot build a TensorRT engine: {why}")
    key = engine_key_for(bundle, file, prec, s)
    cache_dir = s.cache_dir or default_cache_dir()
    hit, why = lookup(cache_dir, key)
    if hit:
        log.info("using cached engine %s", hit)
        return hit, key
    log.info("%s: building %s engine from %s", why, prec, file)
    cache = None
    if prec == "int8-calib":
        from edgecv.bundle.calib_cache import retarget_header

        cache = retarget_header(bundle.path(bundle.manifest["calibration_cache"]).read_bytes(), key.trt_version)
    plan = build_plan(bundle.path(file), prec, replace(s, timing_cache=s.timing_cache or timing_cache_path(cache_dir, key)),
                      cache)
    return store(cache_dir, key, plan, {"file": file, "fp16": fp16, "workspace_mb": s.workspace_mb,
                                        "max_batch": max_batch, "opt_level": s.opt_level}), key


def build_engine_for_bundle(bundle_dir, int8: bool = True, settings: Optional[BuildSettings] = None,
                            verify: bool = True, **fields) -> Dict:
    """``edgecv build``: the engine for the bundle's int8 (or fp16, or fp32) artefact on this device."""
    from edgecv.bundle.reader import open_bundle

    s = _settings(settings, fields)
    bundle = open_bundle(bundle_dir, verify=verify)
    path, key = engine_for_bundle(bundle, "int8" if int8 else ("fp16" if s.fp16 else "fp32"), s)
    return {"engine": str(path), "key": asdict(key)}
