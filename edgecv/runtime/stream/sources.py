"""Frame sources for ``edgecv run``: V4L2 devices, Jetson CSI cameras, RTSP, video files, image folders,
raw GStreamer pipelines.

Live sources are read by a thread that keeps only the newest frame (older ones are counted as dropped),
so latency never grows with a backlog. Files and folders yield every frame in order.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import cv2
import numpy as np

from edgecv.runtime.stream.capture import (
    OPEN_TIMEOUT_S,
    READ_TIMEOUT_S,
    LatestFrameReader,
    SourceFailed,
    classify,
    open_bounded,
    probe_device,
    probe_network,
)
from edgecv.utils.limits import check_fps, frame_size_problem

log = logging.getLogger("edgecv.sources")


@dataclass(frozen=True)
class SourceOptions:
    """How a source is read: looped, paced like a live camera, its retry budget and timeouts, FFmpeg's decoder
    threads, and the size a CSI camera's hardware scaler delivers."""

    loop: bool = False
    realtime: bool = False
    max_failures: Optional[int] = 5  # reconnect attempts in a row before giving up (None: forever, capped backoff)
    backoff_s: float = 0.5
    read_timeout_s: float = READ_TIMEOUT_S
    open_timeout_s: float = OPEN_TIMEOUT_S
    decode_threads: Optional[int] = None
    scale_to: Optional[Tuple[int, int]] = None
    fps: Optional[float] = None

    def check(self, src: str) -> "SourceOptions":
        if self.open_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("open and read timeouts must be > 0")
        if self.fps is not None:
            check_fps(self.fps, f"{src}: fps")
        return self


class FrameSource:
    """Iterate frames with reconnect and backoff; ``dropped`` and ``reconnects`` are counted.

    Files and folders fail at once when they cannot be read (retrying cannot help); live sources are
    retried with backoff, and the error after the last try names the last cause.
    """

    def __init__(self, src: str, options: Optional[SourceOptions] = None, heartbeat=None,
                 start_gate: Optional[threading.Event] = None, **fields):
        """``options`` (or its fields by name) say how to read; ``heartbeat`` is called while waiting to reconnect
        (the loop is alive); ``start_gate``: a ``--realtime`` replay (file or folder) starts its clock when this
        event is set, so several replays opened one after another start together, as cameras already running
        would."""
        o = dataclasses.replace(options or SourceOptions(), **fields).check(src)
        self.src, self.options = src, o
        self.unusable: Optional[SourceFailed] = None
        try:
            self.kind, self.arg = classify(src)
        except SourceFailed as e:  # raised by ``frames``: one camera's bad source is that camera's error
            self.kind, self.arg, self.unusable = "unusable", None, e
        self.live = self.kind in ("v4l2", "csi", "rtsp", "gstreamer") or o.realtime
        self.loop, self.max_failures, self.backoff_s = o.loop, o.max_failures, o.backoff_s
        self.read_timeout_s, self.open_timeout_s = o.read_timeout_s, o.open_timeout_s
        self.decode_threads, self.scale_to = o.decode_threads, o.scale_to
        self.realtime, self.fps = o.realtime, o.fps
        self.dropped = self.reconnects = self.skipped = 0
        self.frames_read = 0
        self.last_error: Optional[str] = None
        self.frame_time = 0.0  # monotonic capture time of the frame last yielded
        # the image file the frame last yielded came from (folders; None for cameras and videos): skipped images
        # shift the frame numbers, so only the name ties an answer to its image
        self.frame_name: Optional[str] = None
        self.heartbeat = heartbeat or (lambda: None)
        self.max_backoff_s = 10.0
        self.start_gate = start_gate
        self.opened = threading.Event()  # set once the source opened (or listed its folder) the first time
        # True: while waiting to reconnect, ``frames`` yields None instead of sleeping (a loop that reads several
        # sources in one thread goes on with the others)
        self.yield_while_waiting = False
        self._cap = self._reader = None

    def _open(self) -> None:
        if self.kind == "file" and not Path(self.arg).is_file():
            raise SourceFailed(f"{self.src}: no such file", final=True)
        if self.kind == "rtsp":
            probe_network(self.arg, min(self.open_timeout_s, 5.0))
        elif self.kind == "v4l2" and isinstance(self.arg, str):
            probe_device(self.arg)
        elif self.kind == "v4l2":
            probe_device(f"/dev/video{self.arg}")
        cap = open_bounded(self.kind, self.arg, self.src, self.open_timeout_s, decode_threads=self.decode_threads,
                           scale_to=self.scale_to, read_timeout_s=self.read_timeout_s)
        if not cap.isOpened():
            cap.release()
            if self.kind == "file":
                raise SourceFailed(f"{self.src}: cannot decode (not a video OpenCV/FFmpeg can read, or damaged)",
                                   final=True)
            raise SourceFailed(f"{self.src}: cannot open ({self.kind})")
        self._cap = cap
        pace = None
        if self.realtime and self.kind == "file":
            pace = self.fps or cap.get(cv2.CAP_PROP_FPS) or 30.0
            if not 0 < pace < 1000:
                pace = 30.0
        self._reader = LatestFrameReader(cap, pace, self.start_gate) if self.live else None
        self.opened.set()

    def frame_size(self) -> Optional[Tuple[int, int]]:
        """``(height, width)`` the opened video reports, or None (not open yet, a folder, unknown)."""
        cap = self._cap
        if cap is None:
            return None
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        return (h, w) if w > 0 and h > 0 else None

    def _close(self) -> None:
        if self._reader is not None:
            self.dropped += self._reader.dropped
            self._reader.close()
        elif self._cap is not None:
            self._cap.release()
        self._cap = self._reader = None

    def _folder_frames(self) -> Iterator[np.ndarray]:
        from edgecv.utils.images import image_files

        files = image_files(self.arg)
        if not files:
            raise SourceFailed(f"{self.arg}: no images in folder")
        self.opened.set()
        if self.realtime:  # a camera showing one image per frame period: the newest one when asked
            while self.start_gate is not None and not self.start_gate.wait(0.1):
                pass
            period, t0, last = 1.0 / (self.fps or 30.0), time.monotonic(), -1
            while True:
                i = int((time.monotonic() - t0) / period)
                if i == last:
                    time.sleep(max(0.0, t0 + (i + 1) * period - time.monotonic()))
                    continue
                if i >= len(files) and not self.loop:
                    return
                self.dropped += max(0, i - last - 1)
                last = i
                img = self._read_or_skip(files[i % len(files)])
                if img is None:
                    continue
                self.frame_time, self.frame_name = t0 + i * period, str(files[i % len(files)])
                yield img
        while True:
            for f in files:
                img = self._read_or_skip(f)
                if img is None:
                    continue
                self.frame_time, self.frame_name = time.monotonic(), str(f)
                yield img
            if not self.loop:
                return

    def _read_or_skip(self, path: Path) -> Optional[np.ndarray]:
        """A folder's image, or None counted as skipped; the first one skipped is named with why."""
        from edgecv.utils.images import read_image_why

        img, why = read_image_why(path, cv2.IMREAD_COLOR)
        if img is None:
            if not self.skipped:
                log.warning("%s: image skipped (%s); later ones are counted in the summary (-v names them)",
                            path, why)
            else:
                log.debug("%s: image skipped (%s)", path, why)
            self.skipped += 1
        return img

    def frames(self) -> Iterator[Optional[np.ndarray]]:
        """Every frame (files, folders) or the newest one (live sources), reconnecting with capped backoff; a frame
        over the frame budget is counted as skipped."""
        if self.unusable is not None:
            raise self.unusable
        if self.kind == "folder":
            yield from self._folder_frames()
            return
        failures = 0
        while True:
            frame = self._next_or_none()
            if frame is None:
                if self.kind == "file" and self._cap is not None:  # end of file (paced or not)
                    self._close()
                    if not self.loop:
                        return
                    if Path(self.arg).is_file():
                        continue
                else:
                    self._close()
                failures += 1  # a live source lost, or a looped file that vanished mid-run
                yield from self._wait_to_reconnect(failures)
                continue
            if failures:
                log.warning("%s: recovered after %d failed attempt(s)", self.src, failures)
            failures = 0
            problem = frame_size_problem(*frame.shape[:2])
            if problem:  # counted and skipped, as a folder's undecodable image is
                if not self.skipped:
                    log.warning("%s: frame skipped: %s", self.src, problem)
                self.skipped += 1
                continue
            self.frames_read += 1
            self.frame_time = self._reader.taken_stamp if self._reader is not None else time.monotonic()
            yield frame

    def _next_or_none(self) -> Optional[np.ndarray]:
        """The next frame, or None with ``last_error`` saying why; SourceFailed when it can never work."""
        try:
            if self._cap is None:
                self._open()
            frame = self._reader.get(self.read_timeout_s) if self._reader else self._read_file()
            if frame is None and self._reader is not None and not self._reader.failed:
                self.last_error = f"no frame within {self.read_timeout_s:g} s (--read-timeout)"
            elif frame is None and self.frames_read == 0 and self._cap is not None:
                self.last_error = ("cannot decode any frame (damaged or unsupported video)"
                                   if self.kind == "file" else "the source closed before the first frame")
                if self.kind == "file":
                    self._close()
                    raise SourceFailed(f"{self.src}: {self.last_error}", final=True)
            return frame
        except SourceFailed as e:
            if (e.final or self.kind == "file") and self.frames_read == 0:
                raise  # never worked, cannot work: a configuration error, not a dropped camera
            self.last_error = str(e).split(": ", 1)[-1] if str(e).startswith(str(self.src)) else str(e)
            return None

    def _wait_to_reconnect(self, failures: int) -> Iterator[None]:
        """Back off before the next try (yielding None meanwhile when the caller reads other sources too), or
        SourceFailed past ``max_failures``."""
        if self.max_failures is not None and failures > self.max_failures:
            raise SourceFailed(f"{self.src}: giving up after {failures} failed attempt{'s' if failures > 1 else ''} "
                               f"in a row (last error: {self.last_error or 'no frame'})")
        self.reconnects += 1
        wait = min(self.backoff_s * 2 ** (failures - 1), self.max_backoff_s)
        log.warning("%s: lost (%s); reconnecting in %.1f s (attempt %d)", self.src, self.last_error or "no frame",
                    wait, failures)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.yield_while_waiting:
                yield None  # no frame now: the caller reads its other sources meanwhile
                continue
            self.heartbeat()
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def _read_file(self) -> Optional[np.ndarray]:
        ok, frame = self._cap.read()
        return frame if ok else None

    def close(self) -> None:
        self._close()
