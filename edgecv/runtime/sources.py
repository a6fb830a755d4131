"""Frame sources for ``edgecv run``: V4L2 devices, Jetson CSI cameras, RTSP, video files, image folders,
raw GStreamer pipelines.

Live sources are read by a thread that keeps only the newest frame (older ones are counted as dropped),
so latency never grows with a backlog. Files and folders yield every frame in order.
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Iterator, Optional, Tuple

import cv2
import numpy as np

from edgecv.errors import DeviceError


class SourceFailed(DeviceError):
    """The source cannot be opened or stopped delivering frames past the reconnect budget."""


def gstreamer_available() -> bool:
    info = cv2.getBuildInformation()
    m = re.search(r"GStreamer:\s*(\S+)", info)
    return bool(m and m.group(1).upper().startswith("YES"))


CSI_SIZE = (1280, 720)  # capture mode requested from nvarguscamerasrc (width, height)


def csi_pipeline(sensor: int, width: int = CSI_SIZE[0], height: int = CSI_SIZE[1], fps: int = 30,
                 scale_to: Optional[Tuple[int, int]] = None) -> str:
    """nvarguscamerasrc pipeline for OpenCV; ``scale_to`` (width, height) has the VIC scale the frames.

    With ``scale_to`` set to the model's resize size, the Jetson's video image compositor does the resize
    (interpolation-method=5, its highest-quality filter) in hardware, and BGRx->BGR conversion and every
    CPU step after it see a 455x256 frame instead of 1280x720.
    """
    scale = (f"nvvidconv interpolation-method=5 ! video/x-raw, width={scale_to[0]}, height={scale_to[1]}, "
             "format=BGRx") if scale_to else "nvvidconv ! video/x-raw, format=BGRx"
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM), width={width}, height={height}, "
            f"framerate={fps}/1 ! {scale} ! videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1")


def classify(src: str) -> Tuple[str, object]:
    """(kind, argument): kind in v4l2 | csi | rtsp | gstreamer | folder | file."""
    s = str(src)
    if s.isdigit():
        return "v4l2", int(s)
    if s.startswith("/dev/video"):
        return "v4l2", s
    if s.startswith("csi://"):
        return "csi", int(s[len("csi://"):] or 0)
    if s.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return "rtsp", s
    if "!" in s:
        return "gstreamer", s
    p = Path(s)
    if p.is_dir():
        return "folder", p
    if p.is_file():
        return "file", p
    raise SourceFailed(f"{s}: no such file, folder or device (sources: /dev/videoN, N, csi://N, rtsp://..., "
                       "a video file, an image folder, or a GStreamer pipeline with '!')")


def open_capture(kind: str, arg, decode_threads: Optional[int] = None,
                 scale_to: Optional[Tuple[int, int]] = None) -> cv2.VideoCapture:
    """Open a capture.

    ``decode_threads`` caps FFmpeg's decoder threads (files and RTSP): with the default (one per core) the
    decoder keeps decoding ahead in the background while the model runs on the same cores. ``scale_to``
    has a CSI camera's pipeline scale frames in hardware (see ``csi_pipeline``).
    """
    # CAP_PROP_N_THREADS and open-time parameters need OpenCV >= 4.6 (JetPack 4's 4.1 has neither).
    params = [cv2.CAP_PROP_N_THREADS, int(decode_threads)] if decode_threads and hasattr(cv2, "CAP_PROP_N_THREADS") \
        else None
    if kind in ("csi", "gstreamer"):
        if not gstreamer_available():
            raise SourceFailed(f"{'csi://' + str(arg) if kind == 'csi' else arg!r}: this OpenCV build has no "
                               "GStreamer support (on Jetson use JetPack's python3-opencv)")
        cap = cv2.VideoCapture(csi_pipeline(arg, scale_to=scale_to) if kind == "csi" else arg, cv2.CAP_GSTREAMER)
    elif kind == "v4l2":
        cap = cv2.VideoCapture(arg, cv2.CAP_V4L2)
    elif kind == "rtsp":
        cap = cv2.VideoCapture(arg, cv2.CAP_FFMPEG, params) if params else cv2.VideoCapture(arg, cv2.CAP_FFMPEG)
    else:
        cap = cv2.VideoCapture(str(arg), cv2.CAP_ANY, params) if params else cv2.VideoCapture(str(arg))
    return cap


class LatestFrameReader:
    """Reads a live capture in a thread; ``get`` returns the newest frame only."""

    def __init__(self, cap: cv2.VideoCapture):
        self.cap = cap
        self.cond = threading.Condition()
        self.frame: Optional[np.ndarray] = None
        self.seq = 0
        self.taken = 0
        self.dropped = 0
        self.failed = False
        self.stop_flag = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_flag:
            ok, frame = self.cap.read()
            with self.cond:
                if not ok:
                    self.failed = True
                    self.cond.notify_all()
                    return
                if self.frame is not None and self.seq > self.taken:
                    self.dropped += 1  # the previous frame was never consumed
                self.frame, self.seq = frame, self.seq + 1
                self.cond.notify_all()

    def get(self, timeout: float = 5.0) -> Optional[np.ndarray]:
        with self.cond:
            if not self.cond.wait_for(lambda: self.seq > self.taken or self.failed, timeout):
                return None
            if self.seq > self.taken:
                self.taken = self.seq
                return self.frame
            return None

    def close(self) -> None:
        self.stop_flag = True
        self.thread.join(timeout=2)
        self.cap.release()


class FrameSource:
    """Iterate frames with reconnect and backoff; ``dropped`` and ``reconnects`` are counted."""

    def __init__(self, src: str, loop: bool = False, realtime: bool = False, max_failures: int = 5,
                 backoff_s: float = 0.5, read_timeout_s: float = 5.0, decode_threads: Optional[int] = None,
                 scale_to: Optional[Tuple[int, int]] = None):
        self.src = src
        self.kind, self.arg = classify(src)
        self.live = self.kind in ("v4l2", "csi", "rtsp", "gstreamer") or realtime
        self.loop, self.max_failures, self.backoff_s = loop, max_failures, backoff_s
        self.read_timeout_s = read_timeout_s
        self.decode_threads, self.scale_to = decode_threads, scale_to
        self.dropped = self.reconnects = self.skipped = 0
        self._cap = self._reader = None

    def _open(self) -> None:
        cap = open_capture(self.kind, self.arg, self.decode_threads, self.scale_to)
        if not cap.isOpened():
            cap.release()
            raise SourceFailed(f"{self.src}: cannot open ({self.kind})")
        self._cap = cap
        self._reader = LatestFrameReader(cap) if self.live else None

    def _close(self) -> None:
        if self._reader is not None:
            self.dropped += self._reader.dropped
            self._reader.close()
        elif self._cap is not None:
            self._cap.release()
        self._cap = self._reader = None

    def _folder_frames(self) -> Iterator[np.ndarray]:
        from edgecv.data.folders import IMAGE_EXTS

        files = sorted(p for p in Path(self.arg).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise SourceFailed(f"{self.arg}: no images in folder")
        while True:
            for f in files:
                img = cv2.imread(str(f), cv2.IMREAD_COLOR)
                if img is None:
                    self.skipped += 1
                    continue
                yield img
            if not self.loop:
                return

    def frames(self) -> Iterator[np.ndarray]:
        if self.kind == "folder":
            yield from self._folder_frames()
            return
        failures = 0
        while True:
            try:
                if self._cap is None:
                    self._open()
                frame = self._reader.get(self.read_timeout_s) if self._reader else self._read_file()
            except SourceFailed:
                frame = None
            if frame is None:
                if self.kind == "file" and self._cap is not None:  # end of file (paced or not)
                    self._close()
                    if not self.loop:
                        return  # end of file
                    if not Path(self.arg).is_file():  # the file vanished mid-run
                        failures += 1
                    else:
                        continue
                else:
                    self._close()
                    failures += 1
                if failures > self.max_failures:
                    raise SourceFailed(f"{self.src}: source failed {failures} times in a row; giving up")
                self.reconnects += 1
                time.sleep(min(self.backoff_s * 2 ** (failures - 1), 10.0))
                continue
            failures = 0
            yield frame

    def _read_file(self) -> Optional[np.ndarray]:
        ok, frame = self._cap.read()
        return frame if ok else None

    def close(self) -> None:
        self._close()
