"""Which ``k`` of ``n`` images a limited run looks at: spread evenly over the list, not its first ``k``.

Image folders list their images class by class, and so do the splits taken from them: the first 100 of the 812
Caltech-101 evaluation photographs are about 10 of its 101 classes.
"""
from __future__ import annotations

from typing import List


def evenly_spaced(n: int, k: int) -> List[int]:
    """``min(n, k)`` distinct indices into ``range(n)``, evenly spaced from the first to the last, in order."""
    if k >= n:
        return list(range(n))
    if k <= 1:
        return [0][:max(k, 0)]
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]
