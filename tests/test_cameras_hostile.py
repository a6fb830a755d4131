"""Cameras and frames tried as a hostile or careless user would (issue 26): one camera never stops the others,
frames have a pixel budget decided before decoding where the format allows, camera lists are typed and
range-checked with unique ids, and many cameras start in bounded time. Each test fails on the edgecv before
these rules."""
import collections
import json

import cv2
import numpy as np
import pytest
from conftest import invoke

from edgecv.errors import InputSpecError
from edgecv.runtime.stream.cameras import Camera, camera_list
from edgecv.runtime.stream.multi import run_multi
from edgecv.runtime.stream.options import RunOptions
from edgecv.utils import images
from edgecv.utils.limits import MAX_ASPECT, frame_size_problem


def _png(path, h, w, value=128):
    ok, buf = cv2.imencode(".png", np.full((h, w, 3), value, np.uint8))
    path.write_bytes(buf.tobytes())
    return path


@pytest.fixture
def wide_png(tmp_path):
    """A 1 x 200,000 PNG: a few hundred bytes on disk, 39 GB once resized to a 256-pixel shorter side."""
    p = _png(tmp_path / "wide.png", 1, 200_000)
    assert p.stat().st_size < 2000
    return p


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(4):
        _png(d / f"{i}.png", 60 + i, 80, 40 * i)
    return d


# -- the frame budget -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h,w,ok", [(1, 200_000, False), (200_000, 1, False), (480, 640, True), (1, 1, True),
                                    (100, 100 * MAX_ASPECT, True), (100, 100 * MAX_ASPECT + 1, False),
                                    (20_000, 20_000, False), (0, 10, False)])
def test_frame_budget(h, w, ok):
    assert (frame_size_problem(h, w) is None) == ok


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp"])
def test_the_budget_is_decided_from_the_header_before_decoding(ext, tmp_path, monkeypatch):
    ok, buf = cv2.imencode(ext, np.zeros((2, 2 * MAX_ASPECT + 40, 3), np.uint8))
    p = tmp_path / f"wide{ext}"
    p.write_bytes(buf.tobytes())
    assert images.encoded_size(p.read_bytes()) == (2, 2 * MAX_ASPECT + 40)
    decoded = []
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a: decoded.append(a))
    img, why = images.read_image_why(p)
    assert img is None and "aspect ratio" in why and decoded == []


def test_classifier_refuses_an_over_budget_frame_with_a_clear_error(tiny_bundle, wide_png):
    from edgecv import Classifier

    with Classifier(tiny_bundle) as clf:
        with pytest.raises(InputSpecError, match="aspect ratio"):
            clf.classify(wide_png)
        with pytest.raises(InputSpecError, match="aspect ratio"):
            clf.classify(np.zeros((1, 5000), np.uint8))
        assert clf.classify(np.zeros((28, 28), np.uint8)).label  # and it still classifies


def test_one_over_budget_image_is_skipped_by_its_camera_and_by_eval(tiny_bundle, tmp_path, photos, wide_png):
    odd = tmp_path / "odd"
    odd.mkdir()
    wide_png.rename(odd / "0-wide.png")
    _png(odd / "1-ok.png", 50, 50)
    s = run_multi(str(tiny_bundle), [Camera("odd", str(odd)), Camera("fine", str(photos))], RunOptions(),
                  emit=lambda s: None)
    assert s["cameras"]["odd"]["frames"] == 1 and s["cameras"]["odd"]["skipped"] == 1
    assert s["cameras"]["fine"]["frames"] == 4 and s["error"] is None
    labelled = tmp_path / "labelled" / "Trouser"
    labelled.mkdir(parents=True)
    (odd / "0-wide.png").rename(labelled / "wide.png")
    _png(labelled / "ok.png", 30, 30)
    r = invoke("eval", tiny_bundle, "--data", labelled.parent, "--allow-missing-classes", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["n"] == 1 and json.loads(r.output)["skipped"] == 1


def test_a_camera_whose_frames_cannot_be_preprocessed_is_that_cameras_loss(tiny_bundle, photos, monkeypatch):
    """A fault injected into one camera's preprocessing (whatever an odd frame may raise) skips its frames only."""
    from edgecv.runtime.stream import cameras

    real = cameras.CameraThread.preprocess_into

    def flaky(self, frame, out):
        if self.cam.id == "bad":
            self.pre = lambda *a: (_ for _ in ()).throw(cv2.error("odd layout"))
        return real(self, frame, out)

    monkeypatch.setattr(cameras.CameraThread, "preprocess_into", flaky)
    s = run_multi(str(tiny_bundle), [Camera("bad", str(photos)), Camera("good", str(photos))], RunOptions(),
                  emit=lambda s: None)
    assert s["cameras"]["good"]["frames"] == 4
    assert s["cameras"]["bad"]["frames"] == 0 and s["cameras"]["bad"]["skipped"] == 4


def test_a_camera_that_cannot_open_does_not_stop_the_others(tiny_bundle, tmp_path, photos):
    s = run_multi(str(tiny_bundle), [Camera("gone", str(tmp_path / "missing.mp4")), Camera("ok", str(photos))],
                  RunOptions(), emit=lambda s: None)
    assert s["cameras"]["ok"]["frames"] == 4 and "no such file" in s["cameras"]["gone"]["error"]
    assert s["error"] is None  # one of two failed: the run is not failed as a whole


# -- camera lists ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry,needle", [
    ("{id: a, source: SRC, fps: .inf, realtime: true}", "fps"),
    ("{id: a, source: SRC, fps: 1.0e-300, realtime: true}", "fps"),
    ("{id: a, source: SRC, fps: -5, realtime: true}", "fps"),
    ("{id: a, source: SRC, fps: .nan}", "fps"),
    ("{id: a, source: SRC, fps: '30'}", "fps"),
    ("{id: a, source: SRC, loop: 'false'}", "loop"),
    ("{id: a, source: SRC, realtime: 'no'}", "realtime"),
    ("{id: a, source: SRC, loop: 1}", "loop"),
    ("{id: a, source: SRC, 5: x}", "unknown key"),
    ("{id: a, source: 'csi://abc'}", "csi://N"),
    ("{id: a, source: ''}", "source"),
    ("{id: [1, 2], source: SRC}", ".id"),
    ("{id: '', source: SRC}", ".id"),
    ("{id: true, source: SRC}", ".id"),
    ("{id: 1e3, source: SRC}", "read it as a number: quote it"),
    ("{id: a, source: [SRC]}", "source"),
])
def test_camera_list_values_are_typed_and_range_checked(entry, needle, tiny_bundle, tmp_path, photos):
    f = tmp_path / "cams.yaml"
    f.write_text("cameras:\n - " + entry.replace("SRC", str(photos)) + "\n")
    r = invoke("run", tiny_bundle, "--cameras", f)
    assert r.exit_code == 2 and "error:" in r.output and needle in r.output, r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("sources,needle", [([""], "not a source"), (["", "PHOTOS"], "--source"),
                                            (["csi://x"], "csi://N"), (["a\nb"], "control")])
def test_bad_sources_are_one_line(sources, needle, tiny_bundle, photos):
    args = [x for s in sources for x in ("--source", s.replace("PHOTOS", str(photos)))]
    r = invoke("run", tiny_bundle, *args)
    assert r.exit_code == 2 and needle in r.output, r.output


def test_ids_are_unique_across_the_list_and_the_sources(tmp_path, photos):
    f = tmp_path / "cams.yaml"
    f.write_text(f"cameras:\n - {{id: cam1, source: {photos}}}\n - {{id: cam0, source: {photos}}}\n")
    cams = camera_list(str(f), [str(photos), str(photos)])
    assert [c.id for c in cams] == ["cam1", "cam0", "cam2", "cam3"]
    with pytest.raises(ValueError, match="unique ids"):
        run_multi("unused", [Camera("x", str(photos)), Camera("x", str(photos))])


# -- many cameras -----------------------------------------------------------------------------------------------------

def test_a_hundred_cameras_start_and_each_gets_its_turn(tiny_bundle, tmp_path, photos):
    """OpenVINO compiles a model per batch size: 100 cameras used to mean 100 compiled models per worker before the
    first frame (none within 120 s). Rounds are capped and taken in turn, so every camera is classified."""
    cams = [Camera(f"c{i:03d}", str(photos)) for i in range(100)]
    lines = []
    s = run_multi(str(tiny_bundle), cams, RunOptions(backend="openvino", as_json=True), emit=lines.append)
    per = collections.Counter(json.loads(x)["camera"] for x in lines)
    assert s["frames"] == 400 and len(per) == 100 and set(per.values()) == {4}
    assert max(json.loads(x)["batch"] for x in lines) <= 8
    lines.clear()
    s = run_multi(str(tiny_bundle), cams, RunOptions(backend="openvino", as_json=True, max_frames=50, loop=True),
                  emit=lines.append)
    per = collections.Counter(json.loads(x)["camera"] for x in lines)
    assert s["frames"] == 50 and len(per) == 50  # 50 frames go to 50 cameras in turn, not 50 to the first 8
