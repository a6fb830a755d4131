"""User-facing errors: each means "the input is wrong" and carries a message naming the file or field.

The CLI prints them as one line (exit code 2) instead of a traceback. No heavy imports here.
"""
from edgecv.data.errors import DatasetError
from edgecv.recipe import RecipeError
from edgecv.utils.outputs import OutputError


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe, or not an edgecv checkpoint."""


class ModelError(ValueError):
    """Unknown model name or bad model arguments."""


class SourceError(ValueError):
    """SOURCE is neither a recipe nor a checkpoint, or its model cannot be loaded."""


class ExportError(RuntimeError):
    """An export cannot produce a bundle that meets its gates (nothing is written)."""


class BundleError(ValueError):
    """A bundle is missing, truncated, tampered with, or not a bundle."""


class DeviceError(RuntimeError):
    """The device lacks what a command needs (TensorRT, a GPU, a camera)."""


class ModelFileError(ValueError):
    """A model file (ONNX, engine) is unreadable, truncated, or does not match what its bundle declares."""


class InputSpecError(ValueError):
    """An input does not match the model's input spec."""


class UsageError(ValueError):
    """A value given to a command cannot be used as it is (it names the option or field)."""


def USER_ERRORS():
    return (RecipeError, DatasetError, CheckpointError, ModelError, SourceError, ExportError, BundleError,
            DeviceError, InputSpecError, UsageError, ModelFileError, OutputError, FileNotFoundError, PermissionError, IsADirectoryError,
            NotADirectoryError)
