"""The Python API: Classifier on the device side (no torch), pipeline functions importable lazily."""
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import FASHION

import edgecv
from edgecv.data.fashion_mnist import CLASSES, load_fashion_mnist
from edgecv.errors import InputSpecError


def test_classifier_matches_eval_and_reads_paths(tiny_bundle, tmp_path):
    x, y = load_fashion_mnist(FASHION, "test")
    with edgecv.Classifier(tiny_bundle) as clf:
        assert clf.labels == CLASSES
        preds = [clf.classify(x[i], topk=3) for i in range(200)]
        batch = clf.classify_batch([x[i] for i in range(200)])
        cv2.imwrite(str(tmp_path / "a.png"), x[0])
        from_path = clf.classify(tmp_path / "a.png")
        bgr = clf.classify(cv2.cvtColor(x[0], cv2.COLOR_GRAY2BGR))
    assert [p.index for p in preds] == [p.index for p in batch]
    assert from_path.index == preds[0].index and bgr.index == preds[0].index
    assert all(len(p.topk) == 3 and p.topk[0][2] >= p.topk[1][2] >= p.topk[2][2] for p in preds)
    assert all(p.label == CLASSES[p.index] and 0 < p.score <= 1 for p in preds)
    from edgecv.utils.sampling import evenly_spaced

    pick = evenly_spaced(len(y), 200)  # the images a limited evaluation judges
    with edgecv.Classifier(tiny_bundle) as clf:
        acc = np.mean([clf.classify(x[i]).index == y[i] for i in pick])
    res = edgecv.evaluate_bundle(str(tiny_bundle), str(FASHION), limit=200, show_progress=False)
    assert acc == pytest.approx(res["top1"], abs=0.011)  # same pipeline (one image may sit on a tie)


@pytest.mark.parametrize("bad", [None, np.zeros((4, 4), np.float32), np.zeros((0, 5), np.uint8),
                                 np.zeros((4, 4, 2), np.uint8), "missing.png"])
def test_classifier_refuses_bad_frames(tiny_bundle, bad):
    with edgecv.Classifier(tiny_bundle) as clf:
        with pytest.raises(InputSpecError):
            clf.classify(bad)


def test_import_edgecv_is_light():
    code = "import sys, edgecv; edgecv.Classifier; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert callable(edgecv.export_bundle) and callable(edgecv.train_recipe) and callable(edgecv.verify)
    with pytest.raises(AttributeError):
        edgecv.nope  # noqa: B018


def test_export_options_with_a_typo_are_refused_by_name(tiny_ckpt, tmp_path):
    """The Python API takes the export's options as a dict: a misspelt key was set as a stray attribute and the
    export ran without it (an unpruned bundle for {'prnue': 0.5})."""
    from conftest import TINY_RECIPE

    from edgecv.errors import RecipeError

    with pytest.raises(RecipeError, match=r"export option 'prnue' does not exist \(did you mean 'prune'\?\)"):
        edgecv.export_bundle(str(TINY_RECIPE), str(tmp_path / "b"), {"prnue": 0.5}, [f"checkpoint={tiny_ckpt}"],
                             show_progress=False)
    assert not (tmp_path / "b").exists()
