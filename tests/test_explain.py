import pytest
from pathlib import Path

from edgecv.train.explain import explain_images

from conftest import ROOT


def test_gradcam_png_and_deletion_check(imagenet_dir, tmp_path):
    imgs = [str(p) for p in sorted(imagenet_dir.glob("*.JPEG"))[:3]]
    res = explain_images(str(ROOT / "recipes" / "efficientnet_lite0_imagenet.yaml"), imgs, str(tmp_path),
                         method="gradcam", topk=3, check=True)
    assert len(res["images"]) == 3
    for r in res["images"]:
        png = Path(r["png"])
        assert png.exists() and png.stat().st_size > 10_000
        assert 0 <= r["score_top_deleted"] <= 1 and r["drop_top"] == pytest.approx(r["score"] - r["score_top_deleted"], abs=1e-6)
    assert res["images"][0]["label"] == "tench"
    assert res["deletion_pass_rate"] is not None
