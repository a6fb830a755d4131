"""Model registry, model families, checkpoints."""
from edgecv.models.registry import ModelError, create_model, list_models, register_model

__all__ = ["ModelError", "create_model", "list_models", "register_model"]
