"""User-facing errors: each means "the input is wrong" and carries a message naming the file or field.

The CLI prints them as one line (exit code 2) instead of a traceback. No heavy imports here.
"""


class RecipeError(ValueError):
    """A recipe, calibration set, camera list or override is invalid."""


class DatasetError(ValueError):
    """A dataset path is missing, empty, or holds no readable images."""


class OutputError(ValueError):
    """An output path cannot be written without losing data (or without racing another writer)."""


class UnwritableError(OutputError, OSError):
    """A file cannot be written where it was asked for (a folder not ours, /proc, a file where a folder belongs).
    Still an OSError: a best-effort write (a report, a record) that catches OSError keeps catching it."""


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


class SignatureError(BundleError):
    """A bundle's signature is missing, invalid, or made with a key that is not trusted (or trust is configured
    but yields no usable key)."""


class InstallError(BundleError):
    """The bundle cannot be installed (incompatible, older release, failed acceptance); nothing changed."""


class InstallStateError(InstallError):
    """An install root's state is damaged or inconsistent: installs and rollbacks are refused until it is fixed."""


class NoRoomError(InstallError):
    """The install root's file system cannot hold the bundle: the device's state, not the bundle's."""


class UpdateError(BundleError):
    """An update from a TUF repository is refused: its metadata or a download does not verify (the message names
    the attack it stops), or the repository has nothing this device may install."""


class InputSpecError(ValueError):
    """An input does not match the model's input spec."""


class DivergedError(RuntimeError):
    """Training's loss stopped being a finite number: the learning rate (named) is too high for the model or data."""


class UsageError(ValueError):
    """A value given to a command cannot be used as it is (it names the option or field)."""


def USER_ERRORS():
    return (RecipeError, DatasetError, CheckpointError, ModelError, SourceError, ExportError, BundleError,
            DeviceError, InputSpecError, UsageError, DivergedError, ModelFileError, OutputError, FileNotFoundError,
            PermissionError, IsADirectoryError, NotADirectoryError)
