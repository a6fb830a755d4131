"""Where edgecv keeps what it caches on a machine: ``$EDGECV_CACHE``, else ``~/.cache/edgecv``.

Beneath it: ``verified/`` (what ``edgecv verify`` chose, per bundle), ``openvino/`` (compiled models) and
``engines/`` (TensorRT engines; ``$EDGECV_ENGINE_CACHE`` moves them alone).
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("EDGECV_CACHE") or Path.home() / ".cache" / "edgecv")


def cache_dir(name: str) -> Path:
    """A folder under the cache root (``engines`` may be moved on its own with ``$EDGECV_ENGINE_CACHE``)."""
    if name == "engines" and os.environ.get("EDGECV_ENGINE_CACHE"):
        return Path(os.environ["EDGECV_ENGINE_CACHE"])
    return cache_root() / name
