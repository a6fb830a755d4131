"""Progress bars for long loops: one owner for how they look in a terminal and in a log."""
from __future__ import annotations

import sys
from typing import Iterable, Optional

from tqdm import tqdm

# A terminal redraws its bar ten times a second; a log file or a journal keeps every redraw, so it gets one line
# every 30 s instead (a 20-minute export wrote about 80 KB of bars a minute).
LOG_INTERVAL_S = 30.0


def progress(iterable: Optional[Iterable] = None, desc: str = "", total: Optional[int] = None,
             show: bool = True) -> tqdm:
    """A bar on stderr that disappears when done; ``show=False`` turns it off. Update its postfix with
    ``refresh=False``, or each update redraws it."""
    tty = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=not show, dynamic_ncols=tty,
                mininterval=0.1 if tty else LOG_INTERVAL_S)
