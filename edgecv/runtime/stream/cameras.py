"""The cameras of a multi-camera run: the camera list (``--cameras cams.yaml``) and each camera's reader.

A live camera (or a ``--realtime`` replay) is read by its own thread, which keeps its newest preprocessed frame
and drops what the model had no time for; an unpaced file or folder hands over every frame, either from its thread
or, in a loop without capture threads, to the inference worker that asks (``read_inline``).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from edgecv.errors import RecipeError
from edgecv.runtime.stream.capture import SourceFailed, check_source_syntax
from edgecv.runtime.stream.sources import FrameSource
from edgecv.utils.limits import check_fps
from edgecv.utils.yaml_files import read_yaml_mapping

log = logging.getLogger("edgecv.cameras")


@dataclass
class Camera:
    id: str
    source: str
    loop: Optional[bool] = None
    realtime: Optional[bool] = None
    fps: Optional[float] = None


CAMERA_KEYS = ("id", "source", "loop", "realtime", "fps")


def _text(v: Any, where: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int)) or not str(v).strip() \
            or any(ord(c) < 32 or ord(c) == 127 for c in str(v)):
        hint = " (YAML read it as a number: quote it, e.g. '1e3')" if isinstance(v, float) else ""
        raise RecipeError(f"{where}: expected a non-empty string without control characters, got {v!r}{hint}")
    return str(v)


def _source(v: Any, where: str) -> str:
    try:
        return check_source_syntax(_text(v, where))
    except SourceFailed as e:
        raise RecipeError(f"{where}: {e}") from None


def _camera(c: Any, i: int, path: str) -> Camera:
    """One entry of a camera list, every value typed and range-checked (the rules of ``--source``/``--fps``)."""
    where = f"{path}: cameras[{i}]"
    if not isinstance(c, dict) or "source" not in c:
        raise RecipeError(f"{where}: expected a mapping with a 'source' string, e.g. {{id: front, source: csi://0}}")
    unknown = [k for k in c if k not in CAMERA_KEYS]
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)} "
                          f"(known: {', '.join(CAMERA_KEYS)})")
    cam = Camera(_text(c.get("id", f"cam{i}"), f"{where}.id"), _source(c["source"], f"{where}.source"))
    for key in ("loop", "realtime"):
        v = c.get(key)
        if v is not None and type(v) is not bool:  # "false" and "no" as strings are not false
            raise RecipeError(f"{where}.{key}: expected true or false, got {v!r}")
        setattr(cam, key, v)
    if c.get("fps") is not None:
        try:
            cam.fps = check_fps(c["fps"], f"{where}.fps")
        except ValueError as e:
            raise RecipeError(str(e)) from None
    return cam


def load_cameras(path: str) -> List[Camera]:
    """A camera list (YAML): ``cameras: [{id: front, source: csi://0, realtime: false, fps: 30}, ...]``."""
    raw = read_yaml_mapping(Path(path), "camera list")
    cams = raw.get("cameras")
    if not isinstance(cams, list) or not cams:
        raise RecipeError(f"{path}: expected 'cameras:' with a list of {{id, source}}")
    extra = [k for k in raw if k != "cameras"]
    if extra:
        raise RecipeError(f"{path}: unknown top-level key(s) {', '.join(repr(k) for k in extra)} (expected 'cameras:')")
    out: List[Camera] = []
    for i, c in enumerate(cams):
        cam = _camera(c, i, path)
        if any(o.id == cam.id for o in out):
            raise RecipeError(f"{path}: cameras[{i}]: id {cam.id!r} appears twice")
        out.append(cam)
    return out


def camera_list(cameras_file: Optional[str], sources: Sequence[str]) -> List[Camera]:
    """The cameras of one run: the list file's, then each ``--source`` as ``camN`` (the first free N, so an id is
    never shared: two cameras under one id would merge their lines and statistics)."""
    cams = load_cameras(cameras_file) if cameras_file else []
    taken = {c.id for c in cams}
    n = 0
    for src in sources:
        while f"cam{n}" in taken:
            n += 1
        cams.append(Camera(f"cam{n}", _source(src, "--source")))
        taken.add(f"cam{n}")
    return cams


def _why(e: BaseException) -> str:
    return str(e) if isinstance(e, SourceFailed) else f"{type(e).__name__}: {e}"


class CameraThread(threading.Thread):
    """Reads and preprocesses one camera; ``take`` hands out its newest input tensor once.

    Preprocessing runs here, beside decoding, so it overlaps the engine call of the inference loop (OpenCV
    releases the GIL): the inference loop only copies each tensor into its batch.
    """

    def __init__(self, cam: Camera, src: FrameSource, wake: threading.Condition, pre, hold_s: float = 0.0):
        super().__init__(daemon=True, name=f"camera {cam.id}")
        self.cam, self.src, self.wake, self.pre = cam, src, wake, pre
        self.blocking = not src.live  # an unpaced file or folder hands over every frame
        self.hold_s = hold_s
        self.urgent = False  # a newer frame is waiting behind the one not yet taken: close the round now
        self.latest = None  # (input tensor, capture time, image file name or None)
        self.dropped = 0
        self.error: Optional[str] = None
        self.done = False
        self.stop = threading.Event()
        self._frames = None  # the source's frame iterator, when a worker reads it (``read_inline``)

    def read_inline(self) -> Optional[np.ndarray]:
        """The source's next frame, for a loop that reads its unpaced sources in its workers (not started as a
        thread); None when there is none now (the source waits to reconnect) or any more (``done``, and
        ``error`` when it failed)."""
        if self.done:
            return None
        if self._frames is None:
            self.src.yield_while_waiting = True  # a file waiting to reconnect must not hold up the others
            self._frames = self.src.frames()
        try:
            frame = next(self._frames)
        except StopIteration:
            frame, self.done = None, True
        except Exception as e:  # noqa: BLE001 - whatever ends this camera ends this camera only
            frame, self.error, self.done = None, _why(e), True
        return frame

    def preprocess_into(self, frame: np.ndarray, out: np.ndarray) -> bool:
        """Preprocess ``frame`` into ``out``; False (the frame counted as skipped) when it cannot be: one
        camera's odd frame is that camera's loss, never the round's."""
        try:
            self.pre(frame, out)
            return True
        except Exception as e:  # noqa: BLE001 - InputSpecError, cv2.error on an odd frame layout
            self._skip(e)
            return False

    def _skip(self, e: BaseException) -> None:
        if not self.src.skipped:
            log.warning("camera %s: frame skipped (%s)", self.cam.id, _why(e))
        self.src.skipped += 1

    def run(self) -> None:
        try:
            for frame in self.src.frames():
                try:
                    tensor = self.pre(frame)
                except Exception as e:  # noqa: BLE001 - an odd frame is skipped, the camera goes on
                    self._skip(e)
                    continue
                with self.wake:
                    while self.blocking and self.latest is not None and not self.stop.is_set():
                        self.wake.wait(0.1)
                    if self.latest is not None and self.hold_s > 0 and not self.stop.is_set():
                        # A frame late from a busy core lands right behind the previous one. A worker gathering a
                        # round closes it at once; otherwise hold briefly for a worker to come free (the capture
                        # thread keeps reading meanwhile). Lite0, 6 VGA cameras: 7 of 11 frames replaced this way
                        # had waited only 9-13 ms, with a round open.
                        self.urgent = True
                        self.wake.notify_all()
                        end = time.monotonic() + self.hold_s
                        while self.latest is not None and not self.stop.is_set() and time.monotonic() < end:
                            self.wake.wait(max(0.0, end - time.monotonic()))
                        self.urgent = False
                    if self.stop.is_set():
                        break
                    if self.latest is not None:
                        self.dropped += 1  # replaced before the model took it
                    self.latest = (tensor, self.src.frame_time, self.src.frame_name)
                    self.wake.notify_all()
        except Exception as e:  # noqa: BLE001 - whatever ends this camera ends this camera only
            self.error = _why(e)
        finally:
            with self.wake:
                self.done = True
                self.wake.notify_all()

    def take(self):
        item, self.latest = self.latest, None
        if item is not None:
            self.wake.notify_all()
        return item
