"""Where the camera loop's results go: JSON lines, an annotated window, an annotated recording (``--record``)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import cv2
import numpy as np

from edgecv.errors import OutputError
from edgecv.utils.io import atomic_path, sweep_stale


def annotate(frame: np.ndarray, text: str, fps: float) -> np.ndarray:
    out = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    cv2.rectangle(out, (0, 0), (out.shape[1], 26), (0, 0, 0), -1)
    cv2.putText(out, f"{text}  {fps:.1f} FPS", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


RECORD_SUFFIXES = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


class Recorder:
    """The annotated video of ``--record``: checked before the loop starts, written through ``atomic_path`` (a
    temporary beside the target, renamed at the end), and finalised (index written, renamed into place) whenever
    the loop ends, SIGTERM and Ctrl-C included, so the recording is always playable and never half-written at
    its final name. A run that wrote no frame leaves no file."""

    def __init__(self, path: str, fps: float = 30.0):
        p = Path(os.path.abspath(os.fsdecode(path)))
        suffix = p.suffix.lower()
        if suffix not in RECORD_SUFFIXES:
            raise OutputError(f"--record {path}: unsupported extension {p.suffix or '(none)'!r} "
                              f"(use {', '.join(sorted(RECORD_SUFFIXES))})")
        if p.is_dir():
            raise OutputError(f"--record {path}: is a directory; give a file name")
        if not p.parent.is_dir():
            raise OutputError(f"--record {path}: folder {p.parent} does not exist")
        if not os.access(p.parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
            raise OutputError(f"--record {path}: not writable")
        sweep_stale(p.parent)  # any dead run's temporaries here (their names may not contain ours)
        self.path, self.fps = p, fps
        self.fourcc = cv2.VideoWriter_fourcc(*RECORD_SUFFIXES[suffix])
        self._target = atomic_path(p)
        try:
            self.tmp = self._target.__enter__()
        except OutputError as e:  # /proc, /sys: the folder is there and says writable, but takes no new file
            raise OutputError(f"--record {e}") from None
        probe = cv2.VideoWriter(self.tmp, self.fourcc, fps, (64, 48))
        ok = probe.isOpened()
        probe.release()
        if not ok:
            self._abort()
            raise OutputError(f"--record {path}: this OpenCV cannot write {p.suffix} video")
        self.writer = None
        self.size = None
        self.frames = 0
        self.error: Optional[str] = None  # set by close() when the file does not hold what was written

    def write(self, vis: np.ndarray) -> None:
        if self.writer is None:
            self.size = (vis.shape[1], vis.shape[0])
            self.writer = cv2.VideoWriter(self.tmp, self.fourcc, self.fps, self.size)
        if (vis.shape[1], vis.shape[0]) != self.size:  # folders mix image sizes; video cannot
            vis = cv2.resize(vis, self.size)
        # Counted first: SIGTERM and Ctrl-C reach the main thread as an exception at the interpreter's next check,
        # which comes after a call returns, never between these two lines. Counted after, a signal landing as
        # write() returned left a frame in the file the count missed (31 frames, 30 counted).
        self.frames += 1
        self.writer.write(vis)

    def _abort(self) -> None:
        try:
            self._target.__exit__(_NoFrames, _NoFrames(), None)
        except _NoFrames:
            pass

    def close(self) -> Optional[str]:
        """Finalise; the recording's path, or None when no frame was written (nothing is left then)."""
        if self.writer is None:
            self._abort()
            return None
        self.writer.release()
        self.writer = None
        # OpenCV's writer reports no write error: a full disk left a file of 5 frames (or none) and a summary
        # that claimed 100. The container's own frame count says what the file holds.
        held = _frames_in(self.tmp)
        why = "the disk is full" if shutil.disk_usage(self.path.parent).free < (1 << 20) else "the writer failed"
        if held < 0:
            self._abort()
            self.error = f"--record {self.path}: nothing playable could be written ({why}); no file was kept"
            return None
        self._target.__exit__(None, None, None)
        if held != self.frames:
            self.error = (f"--record {self.path}: incomplete, its index counts {held} of the {self.frames} frames "
                          f"written ({why})")
        return str(self.path)


def _frames_in(path: str) -> int:
    """The frame count a video file's container declares, or -1 when the file cannot be opened."""
    cap = cv2.VideoCapture(path)
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
    finally:
        cap.release()


class _NoFrames(Exception):
    """Ends a recording's temporary file without renaming it into place."""


class FrameStamp(NamedTuple):
    """When a frame was captured (monotonic seconds), how old it was when classified, and the image file it came
    from (folder sources; None for cameras and videos)."""
    capture_time: float
    age_ms: float
    name: Optional[str] = None


def file_field(name: Optional[str]) -> dict:
    """``{"file": name}`` for a JSON frame line, or nothing (a camera's or a video's frame). A name that is not
    UTF-8 keeps its bytes as surrogate escapes (``\\udcff``), which ``os.fsencode`` turns back into the bytes."""
    return {} if name is None else {"file": name}


def image_line(name: str, pred, camera: Optional[str] = None) -> str:
    """The text line for an image of a folder (jetson-inference's imagenet prints one per frame; a camera's frames
    would flood the terminal, so only folders get one): its file, label and score. What a terminal cannot show is
    escaped: a name that is not UTF-8 (``\\udcXX``; printed raw, it fails on a UTF-8 terminal) and control
    characters (a newline in a file name would forge a line)."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in name)
    return f"{camera + '  ' if camera else ''}{shown}  {pred.label}  {pred.score:.3f}"


class Sinks:
    """The outputs of one camera loop: a JSON line per frame (``as_json``), the annotated window (``display``,
    where a display exists) and the recording. ``write`` returns False when the user closed the window."""

    def __init__(self, emit: Optional[Callable[[str], None]], as_json: bool, display: bool,
                 recorder: Optional[Recorder]):
        self.emit = emit or (lambda s: print(s, flush=True))
        self.as_json, self.show, self.recorder = as_json, display and display_available(), recorder
        self.wall_offset = time.time() - time.monotonic()  # monotonic capture times -> epoch seconds in the lines

    def write(self, n: int, frame: np.ndarray, pred, stamp: FrameStamp, fps: float, latency_ms) -> bool:
        """Output frame ``n``; an image of a folder (``stamp.name``) is named in its JSON line, or in a text line
        of its own without ``--json``."""
        if self.as_json:
            self.emit(json.dumps({"frame": n, **file_field(stamp.name), "label": pred.label, "index": pred.index,
                                  "score": pred.score,
                                  "topk": [{"index": i, "label": lb, "score": p} for i, lb, p in pred.topk],
                                  "capture_time": round(stamp.capture_time + self.wall_offset, 6),
                                  "age_ms": round(stamp.age_ms, 3),
                                  "latency_ms": {k: round(v, 4) for k, v in latency_ms.items()}}))
        elif stamp.name is not None:
            self.emit(image_line(stamp.name, pred))
        if self.show or self.recorder:
            vis = annotate(frame.copy(), f"{pred.label} {pred.score:.2f}", fps)
            if self.recorder:
                self.recorder.write(vis)
            if self.show:
                cv2.imshow("edgecv", vis)
                return cv2.waitKey(1) & 0xFF not in (27, ord("q"))
        return True

    def close(self) -> Optional[str]:
        """Finalise the recording (its path, or None); close the window."""
        if self.show:
            cv2.destroyAllWindows()
        return self.recorder.close() if self.recorder else None
