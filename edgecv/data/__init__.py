"""Datasets and transforms. ``load_data`` is the one entry point the pipeline uses."""
from edgecv.errors import DatasetError

__all__ = ["DatasetError", "load_data", "build_dataset"]


def __getattr__(name):
    # Lazy: importing edgecv.data must not import torch (the device side reads DatasetError).
    if name in ("load_data", "build_dataset", "dataset_for_path"):
        from edgecv.data import loaders

        return getattr(loaders, name)
    raise AttributeError(name)
