"""edgecv: train, compress, export and deploy CNN image classifiers to edge devices.

The Python API (see edgecv.api): ``Classifier`` (device side, no torch), and ``load_recipe``, ``train_recipe``,
``export_bundle``, ``verify``, ``evaluate_bundle`` (imported on first use, so ``import edgecv`` stays light).
"""

__version__ = "0.1.0"

_LAZY = {
    "Classifier": "edgecv.runtime.classifier:Classifier",
    "Prediction": "edgecv.runtime.classifier:Prediction",
    "load_recipe": "edgecv.recipe:load_recipe",
    "train_recipe": "edgecv.train.loop:train",
    "export_bundle": "edgecv.export.pipeline:export_bundle",
    "verify": "edgecv.runtime.acceptance.verify:verify",
    "evaluate_bundle": "edgecv.evaluate.bundle:eval_bundle",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name].split(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'edgecv' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
