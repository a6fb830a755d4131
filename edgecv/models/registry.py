"""Model registry (timm style): ``@register_model`` on a factory, ``create_model(name, **args)``.

The registry imports no model family: the package (edgecv/models/__init__.py) imports the built-in families,
whose decorators register them, so ``from edgecv.models import create_model`` knows every built-in model."""
from __future__ import annotations

import re
import reprlib
from typing import Callable, Dict, List

from edgecv.errors import USER_ERRORS, ModelError

_REGISTRY: Dict[str, Callable] = {}
_CFG: Dict[str, Dict] = {}

# What a torchvision ImageNet model expects; a family with other pretrained preprocessing registers its own.
IMAGENET_CFG = {"input_size": 224, "resize": 256, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def register_model(fn: Callable = None, *, name: str | None = None, cfg: Dict | None = None):
    """Register a factory ``fn(num_classes=..., pretrained=..., **args) -> nn.Module``, with the preprocessing its
    pretrained weights expect (``cfg``: input_size, resize, mean, std; default ``IMAGENET_CFG``). Duplicates are
    refused."""

    def wrap(f: Callable) -> Callable:
        key = name or f.__name__
        if key in _REGISTRY:
            raise ModelError(f"model {key!r} is already registered (by {_REGISTRY[key].__module__})")
        _REGISTRY[key] = f
        _CFG[key] = {**IMAGENET_CFG, **(cfg or {})}
        return f

    return wrap(fn) if fn is not None else wrap


def model_cfg(name: str) -> Dict:
    """The preprocessing the pretrained weights of ``name`` expect (a copy)."""
    if name not in _CFG:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return {k: list(v) if isinstance(v, list) else v for k, v in _CFG[name].items()}


def _why(e: BaseException) -> str:
    """A constructor's complaint in one short line: an allocation that failed says how much it asked for."""
    text = str(e) or type(e).__name__
    asked = re.search(r"allocate (\d+) bytes", text)
    if isinstance(e, MemoryError) or asked:
        return "too large to build here" + (f" (it asked for {int(asked.group(1)) / 1e9:,.0f} GB)" if asked else "")
    line = text.splitlines()[0]
    return line if len(line) <= 200 else line[:200] + "..."


def list_models() -> List[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int | None = None, pretrained: bool = False, **args):
    """Build a registered model. ``num_classes=None`` keeps the model's own default head."""
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    kw = dict(args)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    try:
        return _REGISTRY[name](pretrained=pretrained, **kw)
    except USER_ERRORS():  # already says what to do (a missing weights package, no pretrained weights)
        raise
    except (TypeError, ValueError, RuntimeError, MemoryError) as e:  # what a constructor says of its arguments
        raise ModelError(f"model {name!r}: bad arguments {reprlib.repr(kw)}: {_why(e)}") from None
