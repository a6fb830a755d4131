"""Model registry, model families, checkpoints. Importing the package registers the built-in families."""
from edgecv.models import efficientnet_lite, small_cnns, torchvision_models  # noqa: F401 (their @register_model)
from edgecv.models.registry import ModelError, create_model, list_models, model_cfg, register_model

__all__ = ["ModelError", "create_model", "list_models", "model_cfg", "register_model"]
