"""Version strings as tuples, in one place (edgecv's own, TensorRT's, a bundle's ``min_edgecv``)."""
from __future__ import annotations

import re
from typing import Tuple


def version_tuple(text: object, parts: int = 3) -> Tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0)``; missing or non-numeric parts count as 0 (``"2024.4-rc"`` -> (2024, 4, 0))."""
    out = []
    for p in str(text).split(".")[:parts]:
        m = re.match(r"\d+", p)
        out.append(int(m.group()) if m else 0)
    return tuple(out + [0] * (parts - len(out)))
