"""Model registry (timm style): ``@register_model`` on a factory, ``create_model(name, **args)``.

The registry imports no model family: the package (edgecv/models/__init__.py) imports the built-in families,
whose decorators register them, so ``from edgecv.models import create_model`` knows every built-in model."""
from __future__ import annotations

from typing import Callable, Dict, List

from edgecv.errors import ModelError

_REGISTRY: Dict[str, Callable] = {}


def register_model(fn: Callable = None, *, name: str | None = None):
    """Register a factory ``fn(num_classes=..., pretrained=..., **args) -> nn.Module``. Duplicates are refused."""

    def wrap(f: Callable) -> Callable:
        key = name or f.__name__
        if key in _REGISTRY:
            raise ModelError(f"model {key!r} is already registered (by {_REGISTRY[key].__module__})")
        _REGISTRY[key] = f
        return f

    return wrap(fn) if fn is not None else wrap


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
    except TypeError as e:
        raise ModelError(f"model {name!r}: bad arguments {kw}: {e}") from None
