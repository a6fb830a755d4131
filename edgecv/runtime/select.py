"""Pick and open a backend for a bundle (or a bare ONNX file, for development)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

from edgecv.errors import DeviceError
from edgecv.runtime.backend import Backend

log = logging.getLogger("edgecv.runtime")


def resolve_backend_name(backend: str) -> str:
    if backend not in ("auto", "tensorrt", "onnxruntime"):
        raise DeviceError(f"--backend: unknown backend {backend!r} (auto, tensorrt, onnxruntime)")
    if backend != "auto":
        return backend
    from edgecv.runtime.trt_compat import trt_available

    ok, _ = trt_available()
    return "tensorrt" if ok else "onnxruntime"


def open_backend(target: str, backend: str = "auto", precision: Optional[str] = None,
                 threads: Optional[int] = None, **kw) -> Tuple[Backend, dict]:
    """Return ``(backend, info)`` for a bundle directory or an ``.onnx`` / ``.engine`` file."""
    name = resolve_backend_name(backend)
    p = Path(target)
    if p.is_file() and p.suffix == ".onnx":
        from edgecv.runtime.ort_backend import OrtBackend

        if name == "tensorrt":
            raise DeviceError(f"{target}: a bare ONNX file runs on onnxruntime; build a bundle for tensorrt")
        return OrtBackend(str(p), threads=threads, **kw), {"backend": "onnxruntime", "file": str(p), "precision": "?"}
    from edgecv.runtime.bundle import open_bundle

    bundle = open_bundle(target)
    if name == "onnxruntime":
        from edgecv.runtime.ort_backend import OrtBackend

        art = bundle.artifact("onnxruntime", precision)
        return (OrtBackend(str(bundle.path(art["file"])), threads=threads, **kw),
                {"backend": "onnxruntime", "file": art["file"], "precision": art["precision"], "bundle": bundle})
    from edgecv.runtime.engine_build import engine_for_bundle
    from edgecv.runtime.trt_backend import TrtBackend

    engine_path, key = engine_for_bundle(bundle, precision=precision or bundle.artifact("tensorrt")["precision"])
    return TrtBackend(engine_path, **kw), {"backend": "tensorrt", "file": str(engine_path), "precision": key.precision,
                                            "bundle": bundle}
