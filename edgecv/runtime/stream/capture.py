"""Opening a frame source: what kind a source string names (V4L2 device, Jetson CSI camera, RTSP, GStreamer
pipeline, video file, image folder), why a camera or stream cannot be reached, the OpenCV capture itself (opened in a
helper thread, so the open is bounded and Ctrl-C answers), and a reader thread that keeps only a live capture's
newest frame. ``edgecv.runtime.stream.sources.FrameSource`` reads through these with reconnects.
"""
from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Optional, Tuple

import cv2
import numpy as np

from edgecv.errors import DeviceError


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
