"""The cameras of a multi-camera run: the camera list (``--cameras cams.yaml``) and each camera's reader.

A live camera (or a ``--realtime`` replay) is read by its own thread, which keeps its newest preprocessed frame
and drops what the model had no time for; an unpaced file or folder hands over every frame, either from its thread
or, in a loop without capture threads, to the inference worker that asks (``read_inline``).
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from edgecv.runtime.sources import FrameSource, SourceFailed


@dataclass
class Camera:
    id: str
    source: str
    loop: Optional[bool] = None
    realtime: Optional[bool] = None
    fps: Optional[float] = None


def load_cameras(path: str) -> List[Camera]:
    """A camera list (YAML): ``cameras: [{id: front, source: csi://0, realtime: false, fps: 30}, ...]``."""
    from edgecv.recipe import RecipeError, read_yaml_mapping

    raw = read_yaml_mapping(Path(path), "camera list")
    cams = raw.get("cameras")
    if not isinstance(cams, list) or not cams:
        raise RecipeError(f"{path}: expected 'cameras:' with a list of {{id, source}}")
    out, ids = [], set()
    allowed = {f.name for f in dataclasses.fields(Camera)}
    for i, c in enumerate(cams):
        if not isinstance(c, dict) or not isinstance(c.get("source"), str):
            raise RecipeError(f"{path}: cameras[{i}]: expected a mapping with a 'source' string")
        unknown = set(c) - allowed
        if unknown:
            raise RecipeError(f"{path}: cameras[{i}]: unknown key(s) {', '.join(sorted(unknown))}")
        cam = Camera(**{"id": str(c.get("id", f"cam{i}")), **{k: v for k, v in c.items() if k != "id"}})
        if cam.id in ids:
            raise RecipeError(f"{path}: cameras[{i}]: id {cam.id!r} appears twice")
        ids.add(cam.id)
        out.append(cam)
    return out


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
        self.latest = None  # (frame, capture time)
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
        except SourceFailed as e:
            frame, self.error, self.done = None, str(e), True
        return frame

    def run(self) -> None:
        try:
            for frame in self.src.frames():
                tensor = self.pre(frame)
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
                    self.latest = (tensor, self.src.frame_time)
                    self.wake.notify_all()
        except SourceFailed as e:
            self.error = str(e)
        finally:
            with self.wake:
                self.done = True
                self.wake.notify_all()

    def take(self):
        item, self.latest = self.latest, None
        if item is not None:
            self.wake.notify_all()
        return item
