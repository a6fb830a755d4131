"""The file names of a deploy bundle: the one place that spells them.

Every writer (the export), every reader (``open_bundle``, ``install``, ``sign``) and the output rule (what an
edgecv bundle folder may hold, ``edgecv.utils.outputs``) take them from here.
"""
from __future__ import annotations

import re

MANIFEST = "manifest.json"
SIGNATURE = "model.sig"  # the OpenSSF model-signing tool's default name; not in the manifest (it signs it)
LABELS = "labels.txt"
PREPROCESS = "preprocess.json"
RECIPE = "recipe.yaml"
GOLDEN = "golden.npz"
CALIBRATION_CACHE = "calibration.cache"
PRUNED_MODEL = "pruned_model.pt"
FP32_MODEL = "model_fp32.onnx"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
CORRUPTIONS_PNG = "corruptions.png"
CORRUPTIONS_MD = "corruptions.md"
CORRUPTIONS_JSON = "corruptions.json"
SEEN_IMAGES = "seen_images.txt"  # the images that chose something in the bundle (edgecv.bundle.seen)


def int8_model(file_tag: str) -> str:
    """The int8 artefact of a target whose file tag is ``file_tag`` (``edgecv.targets.Target.file_tag``)."""
    return f"model_int8_{file_tag}.onnx"


_FIXED = (MANIFEST, SIGNATURE, LABELS, PREPROCESS, RECIPE, GOLDEN, CALIBRATION_CACHE, PRUNED_MODEL, FP32_MODEL,
          REPORT_MD, REPORT_PNG, CORRUPTIONS_PNG, SEEN_IMAGES)
# Every name an export may write into a bundle folder (an intact bundle also lists each in its manifest).
BUNDLE_NAMES = re.compile("^(" + "|".join(re.escape(n) for n in _FIXED)
                          + "|" + re.escape(int8_model("@")).replace("@", r"[\w.-]+") + ")$")
