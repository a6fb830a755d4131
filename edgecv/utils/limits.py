"""Limits every input passes, in one place: the frame budget (images and camera frames), frame rates and thread
counts.

No heavy imports here: the CLI's option ranges read these too.
"""
from __future__ import annotations

from typing import Any, Optional

# The frame budget, the one rule every image and frame passes (files before decoding where the header says,
# camera frames as they arrive, ``Preprocessor`` and ``Classifier`` last): at most MAX_PIXELS pixels and a
# longer side at most MAX_ASPECT times the shorter. The aspect limit bounds the resize too: the shorter side
# becomes the model's resize size, so a 1x200000 PNG (664 bytes) asked for 256 x 51,200,000 pixels (39 GB).
MAX_PIXELS = 1 << 27  # 134 megapixels: 400 MB as BGR
MAX_ASPECT = 32


def frame_size_problem(height: int, width: int) -> Optional[str]:
    """Why an image of ``height`` x ``width`` is refused, or None when it is within the frame budget."""
    if height < 1 or width < 1:
        return f"empty image ({width}x{height})"
    if height * width > MAX_PIXELS:
        return f"{width}x{height} is over the frame budget of {MAX_PIXELS / 1e6:.0f} megapixels"
    if max(height, width) > MAX_ASPECT * min(height, width):
        return f"{width}x{height}: aspect ratio over {MAX_ASPECT}:1 (the frame budget)"
    return None


# --smooth: frames averaged. 10,000 is over five minutes at 30 fps, longer than any label stays true on a moving
# vehicle; the window is held in memory (40 MB at 1,000 classes).
MAX_SMOOTH = 10_000

# Timeouts a network or a camera is given, in seconds: an hour is already more than any wait that still helps,
# and an infinite one overflows the clocks it is given to.
MAX_TIMEOUT_S = 3600.0

FPS_RANGE = (0.1, 1000.0)  # frames per second a camera or a --realtime replay may be paced at


def check_fps(value: Any, where: str = "--fps") -> float:
    """``value`` as a frame rate within FPS_RANGE; ValueError naming ``where`` otherwise (inf, NaN, 0, -5, 1e-300,
    a string: each made a camera thread divide by zero, overflow or never end)."""
    lo, hi = FPS_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"{where}: expected a frame rate from {lo:g} to {hi:g}, got {value!r}")
    return float(value)


# Threads (or worker processes) any runtime, decoder, data loader or trainer is given. More than the cores only
# oversubscribes them, and 100,000 ONNX Runtime threads took 16 GB and ignored SIGTERM; 256 covers any host
# edgecv runs on, a Jetson's 12 cores or a workstation's 128, with room.
MAX_THREADS = 256


def check_threads(value: Optional[int], where: str = "--threads") -> Optional[int]:
    """``value`` (None: the runtime's default) when it is a thread count from 1 to MAX_THREADS; ValueError naming
    ``where`` otherwise."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS):
        raise ValueError(f"{where}: expected a thread count from 1 to {MAX_THREADS}, got {value!r}")
    return value


def available_memory() -> Optional[int]:
    """Bytes of memory the kernel says a new allocation can have without swapping (``MemAvailable``); None where
    it does not say (not Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
