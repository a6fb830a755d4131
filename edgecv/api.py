"""The Python API beside the CLI: ``Classifier`` on the device, the pipeline functions on the workstation.

On the device (no torch), as jetson-inference offers ``imageNet.Classify``::

    from edgecv import Classifier

    with Classifier("bundle/") as clf:              # the precision `edgecv verify` chose, else the default
        pred = clf.classify(frame)                  # an OpenCV BGR (or gray) uint8 frame, or an image path
        print(pred.label, pred.score, pred.topk)

On the workstation::

    import edgecv

    recipe = edgecv.load_recipe("recipes/fashion_mnist.yaml", ["train.epochs=3"])
    edgecv.train_recipe(recipe, "runs/fm")
    manifest = edgecv.export_bundle("recipes/fashion_mnist.yaml", "out/fm", {"int8": True, "prune": 0.5})
    report = edgecv.verify("out/fm")

``import edgecv`` imports none of these until first used (edgecv/__init__.py): the device never loads torch.
"""
from edgecv.runtime.classifier import Classifier, Prediction

__all__ = ["Classifier", "Prediction"]
