"""Pick and open a backend for a bundle (or a bare ONNX file, for development), by the target registry."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Tuple

from edgecv import targets
from edgecv.errors import DeviceError, ModelFileError
from edgecv.runtime.backends.base import Backend
from edgecv.utils.io import SPECIAL

log = logging.getLogger("edgecv.runtime")


def backend_choices() -> List[str]:
    return ["auto", *targets.names()]


def resolve_target(backend: str) -> targets.Target:
    """The target ``--backend`` names; ``auto``: the highest-priority target that can run here."""
    if backend == "auto":
        try:
            t, skipped = targets.first_available(lambda t: t.backend_class().available())
        except LookupError as e:
            raise DeviceError(str(e)) from None
        for why in skipped:
            log.debug("auto backend: skipped %s", why)
        return t
    try:
        return targets.get(backend)
    except KeyError:
        raise DeviceError(f"--backend: unknown backend {backend!r} ({', '.join(backend_choices())})") from None


def resolve_backend_name(backend: str) -> str:
    return resolve_target(backend).name


def open_backend(target, backend: str = "auto", precision: Optional[str] = None,
                 threads: Optional[int] = None, **kw) -> Tuple[Backend, dict]:
    """Return ``(backend, info)`` for a bundle (a directory, or a Bundle already opened) or an ``.onnx`` file."""
    from edgecv.bundle.reader import Bundle, open_bundle

    p = None if isinstance(target, Bundle) else Path(target)
    chosen = None
    if p is None or p.is_dir():
        target = open_bundle(target)
        chosen = _verified_choice(target, backend, precision)
        if chosen is not None:
            backend, precision = chosen["target"], chosen["precision"]
            if kw.get("dla_core", -1) < 0 and int(chosen.get("dla_core", -1)) >= 0:
                kw["dla_core"] = int(chosen["dla_core"])  # verified on that DLA core
    if p is not None and not p.is_dir():
        cls = resolve_target(backend).backend_class()
        if not p.exists():
            raise DeviceError(f"{target}: no such bundle directory or .onnx file")
        if p.suffix != ".onnx":
            raise DeviceError(f"{target}: not a bundle directory or an .onnx file")
        if not p.is_file():  # a FIFO would block the runtime's open() where no signal reaches it
            raise DeviceError(f"{target}: not an .onnx file ({SPECIAL})")
        return cls.for_file(str(p), threads=threads, **kw)
    bundle = target  # opened above
    if backend != "auto":
        be, info = _open_checked(bundle, resolve_target(backend), precision, threads, kw)
        info["chosen_by"] = "verify" if chosen is not None else ("flag" if precision else "manifest default")
        return be, info
    # auto: the highest-priority target that runs here; when its engine fails to build or load, the next one
    # (TensorRT -> the CPU runtimes), each fallback with its reason.
    fallbacks = []
    # Among targets of equal priority (the CPU runtimes), the one the export measured fastest comes first.
    cpu = (bundle.manifest.get("cpu_default") or {}).get("target")
    for t in sorted(targets.auto_order(), key=lambda t: (-t.priority, t.name != cpu)):
        ok, why = t.backend_class().available()
        if not ok:
            continue
        if not any(a["target"] == t.name for a in bundle.manifest["artifacts"]):
            fallbacks.append(f"{t.name}: the bundle has no artefact for it")
            continue
        try:
            be, info = _open_checked(bundle, t, precision, threads, kw)
        except (DeviceError, RuntimeError, OSError) as e:  # a damaged model file (ModelFileError) is never hidden
            fallbacks.append(f"{t.name}: {e}")
            log.warning("%s failed here (%s); falling back", t.name, e)
            continue
        info["chosen_by"] = "manifest default" if not precision else "flag"
        if fallbacks:
            info["fallback"] = fallbacks
        return be, info
    raise DeviceError(f"{bundle.root}: no target can run this bundle here: " + "; ".join(fallbacks or ["none available"]))


def _open_checked(bundle, t: targets.Target, precision: Optional[str], threads: Optional[int], kw: dict):
    be, info = t.backend_class().for_bundle(bundle, precision, threads=threads, **kw)
    problems = io_mismatches(bundle, be, info["file"])
    if problems:
        be.close()
        raise ModelFileError("; ".join(problems))
    return be, info


def _verified_choice(bundle, backend: str, precision: Optional[str]) -> Optional[dict]:
    """What ``edgecv verify`` chose on this device for this bundle, when the caller left the choice open."""
    if precision is not None:
        return None
    from edgecv.runtime.choice import recorded_choice

    c = recorded_choice(bundle)
    if c is None or (backend != "auto" and backend != c["target"]):
        return None
    ok, why = targets.get(c["target"]).backend_class().available()
    if not ok:
        log.warning("verify chose %s %s here, but it is unavailable now (%s)", c["target"], c["precision"], why)
        return None
    return c


def io_mismatches(bundle, be: Backend, file: str) -> List[str]:
    """Where a loaded model's input/output differ from what the manifest and preprocess.json declare."""
    out = []
    m = bundle.manifest
    pre = bundle.preprocess
    crop = pre.crop_to
    want_in = [-1 if isinstance(d, str) else d for d in m["inputs"][0]["shape"]]
    got_in = list(be.inputs[0].shape)
    if len(got_in) != 4 or len(want_in) != 4:
        return [f"{file}: input rank {len(got_in)} (manifest: {len(want_in)}); expected NCHW"]
    for g, w in zip(got_in[1:], want_in[1:]):
        if g != w and -1 not in (g, w):
            out.append(f"{file}: input shape {tuple(got_in)} does not match the manifest's {tuple(want_in)}")
            break
    if got_in[1] not in (-1, pre.channels) or any(d not in (-1, crop) for d in got_in[2:]):
        out.append(f"{file}: input shape {tuple(got_in)} does not fit preprocess.json "
                   f"({pre.channels} channels, {crop}x{crop} crop)")
    n = bundle.output_classes()
    got_out = list(be.outputs[0].shape)
    if n is not None and got_out and got_out[-1] not in (-1, n):
        out.append(f"{file}: {got_out[-1]} outputs, but the manifest declares {n} classes")
    return out
