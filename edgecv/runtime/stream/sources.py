"""Frame sources for ``edgecv run``: V4L2 devices, Jetson CSI cameras, RTSP, video files, image folders,
raw GStreamer pipelines.

Live sources are read by a thread that keeps only the newest frame (older ones are counted as dropped),
so latency never grows with a backlog. Files and folders yield every frame in order.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import cv2
import numpy as np

from edgecv.errors import DeviceError
from edgecv.utils.limits import check_fps, frame_size_problem

log = logging.getLogger("edgecv.sources")


class SourceFailed(DeviceError):
    """The source cannot be opened or stopped delivering frames past the reconnect budget.

    ``final``: retrying cannot help (no such device or file, cannot decode, unknown host).
    """

    def __init__(self, msg: str, final: bool = False):
        super().__init__(msg)
        self.final = final


OPEN_TIMEOUT_S = 10.0  # default bound on opening a live source (FFmpeg's own default waits 30 s per try)
READ_TIMEOUT_S = 5.0


def probe_network(url: str, timeout: float) -> None:
    """Connect to a stream URL's host and port first, so a failure names its cause (FFmpeg's does not)."""
    import socket
    from urllib.parse import urlsplit

    try:
        u = urlsplit(url)
        host, port = u.hostname, u.port
    except ValueError as e:
        raise SourceFailed(f"{url}: not a valid URL ({e})", final=True) from None
    if not host:
        raise SourceFailed(f"{url}: no host in the URL", final=True)
    port = port or {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}.get(u.scheme, 554)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except socket.gaierror:
        raise SourceFailed(f"{url}: cannot resolve host {host!r}", final=True) from None
    except ConnectionRefusedError:
        raise SourceFailed(f"{url}: connection refused by {host}:{port}") from None
    except (socket.timeout, TimeoutError):
        raise SourceFailed(f"{url}: timed out connecting to {host}:{port} after {timeout:g} s") from None
    except OSError as e:
        raise SourceFailed(f"{url}: cannot connect to {host}:{port} ({e.strerror or e})") from None


def probe_device(dev: str) -> None:
    """Why a V4L2 device cannot be opened: missing, not permitted, busy, not a device."""
    import errno
    import os

    if not os.path.exists(dev):
        raise SourceFailed(f"{dev}: no such device (is the camera connected? ls /dev/video*)", final=True)
    try:
        fd = os.open(dev, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)
    except OSError as e:
        why = {errno.EACCES: "permission denied (add the user to the 'video' group)",
               errno.EBUSY: "device busy (another program is using the camera)",
               errno.ENODEV: "no such device (disconnected)"}.get(e.errno, e.strerror)
        raise SourceFailed(f"{dev}: cannot open: {why}", final=e.errno == errno.EACCES) from None

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


def check_source_syntax(src: str) -> str:
    """``src`` when it is written like a source; SourceFailed (final) when no camera could ever answer to it.
    Whether it exists is checked when it is opened: a camera may be plugged in later."""
    s = str(src)
    if not s.strip() or any(ord(c) < 32 or ord(c) == 127 for c in s):
        # "" would be the current directory, classified recursively
        raise SourceFailed(f"{s!r}: not a source (empty, or holds control characters)", final=True)
    if s.startswith("csi://"):
        sensor = s[len("csi://"):] or "0"
        if not sensor.isdigit() or int(sensor) > 255:
            raise SourceFailed(f"{s}: expected csi://N with N a sensor number (csi://0, csi://1, ...)", final=True)
    return s


def classify(src: str) -> Tuple[str, object]:
    """(kind, argument): kind in v4l2 | csi | rtsp | gstreamer | folder | file."""
    s = check_source_syntax(src)
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
    what = "not a video file, image folder or camera" if os.path.lexists(s) else "no such file, folder or device"
    raise SourceFailed(f"{s}: {what} (sources: /dev/videoN, N, csi://N, rtsp://..., "
                       "a video file, an image folder, or a GStreamer pipeline with '!')")


def open_capture(kind: str, arg, decode_threads: Optional[int] = None,
                 scale_to: Optional[Tuple[int, int]] = None, open_timeout_s: float = OPEN_TIMEOUT_S,
                 read_timeout_s: float = READ_TIMEOUT_S) -> cv2.VideoCapture:
    """Open a capture.

    ``decode_threads`` caps FFmpeg's decoder threads (files and RTSP): with the default (one per core) the
    decoder keeps decoding ahead in the background while the model runs on the same cores. ``scale_to``
    has a CSI camera's pipeline scale frames in hardware (see ``csi_pipeline``).
    """
    # CAP_PROP_N_THREADS and open-time parameters need OpenCV >= 4.6 (JetPack 4's 4.1 has neither).
    params = [cv2.CAP_PROP_N_THREADS, int(decode_threads)] if decode_threads and hasattr(cv2, "CAP_PROP_N_THREADS") \
        else []
    if kind == "rtsp" and hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
        params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                   cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]
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
        from edgecv.utils.images import opencv_path

        name = opencv_path(arg)
        cap = cv2.VideoCapture(name, cv2.CAP_ANY, params) if params else cv2.VideoCapture(name)
        if name.startswith("/proc/self/fd/"):
            import os

            os.close(int(name.rsplit("/", 1)[1]))  # FFmpeg opened its own descriptor through the link
    return cap


class LatestFrameReader:
    """Reads a live capture in a thread; ``get`` returns the newest frame only.

    ``pace_fps`` makes a file behave like a live camera: frames become available at their frame rate (a 10 s
    clip takes 10 s), and frames the consumer was too slow for are dropped, as a camera's would be.
    ``stamp`` is the monotonic time the newest frame was captured.
    """

    def __init__(self, cap: cv2.VideoCapture, pace_fps: Optional[float] = None,
                 start_gate: Optional[threading.Event] = None):
        self.cap = cap
        self.pace = 1.0 / pace_fps if pace_fps else None
        self.start_gate = start_gate if pace_fps else None  # a paced replay's clock starts when it opens
        self.stamp = self.taken_stamp = 0.0
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
        while self.start_gate is not None and not self.start_gate.wait(0.1) and not self.stop_flag:
            pass
        t0 = time.monotonic()
        n = 0
        while not self.stop_flag:
            ok, frame = self.cap.read()
            if ok and self.pace is not None:
                due = t0 + n * self.pace  # frame n is "captured" at its time in the clip
                n += 1
                while not self.stop_flag and time.monotonic() < due:
                    time.sleep(min(0.01, max(0.0, due - time.monotonic())))
            stamp = time.monotonic()
            with self.cond:
                if not ok:
                    self.failed = True
                    self.cond.notify_all()
                    return
                if self.frame is not None and self.seq > self.taken:
                    self.dropped += 1  # the previous frame was never consumed
                self.frame, self.seq, self.stamp = frame, self.seq + 1, stamp
                self.cond.notify_all()

    def get(self, timeout: float = 5.0) -> Optional[np.ndarray]:
        with self.cond:
            if not self.cond.wait_for(lambda: self.seq > self.taken or self.failed, timeout):
                return None
            if self.seq > self.taken:
                self.taken = self.seq
                self.taken_stamp = self.stamp
                return self.frame
            return None

    def close(self) -> None:
        self.stop_flag = True
        self.thread.join(timeout=2)
        self.cap.release()


def open_bounded(kind: str, arg, src: str, timeout_s: float, **kw) -> cv2.VideoCapture:
    """``open_capture`` in a helper thread, waited for in short steps: the open is bounded by ``timeout_s``
    and Ctrl-C is handled within 0.1 s (a capture opening in the main thread blocks signals until FFmpeg
    gives up)."""
    box: dict = {}

    def target():
        try:
            box["cap"] = open_capture(kind, arg, open_timeout_s=timeout_s, **kw)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True, name=f"open {src}")
    t.start()
    deadline = time.monotonic() + timeout_s
    while t.is_alive():
        t.join(0.1)
        if time.monotonic() > deadline:
            raise SourceFailed(f"{src}: timed out after {timeout_s:g} s opening the {kind} source "
                               "(--open-timeout)")
    if "error" in box:
        raise box["error"]
    return box["cap"]


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
