"""What this CPU can compute fast, from its feature flags: the precisions a CPU runtime offers here and the matrix
units each runs on (what ``tools/bench_peers.py`` measures the peak of, per precision).

- int8: AMX (``amx_int8``) where present, else AVX-512 VNNI or AVX-VNNI, else plain AVX2/SSE;
- bf16: AMX (``amx_bf16``) or AVX-512 BF16 (``avx512_bf16``); without either there is no bf16 precision (OpenVINO
  would emulate it slower than fp32);
- fp32: AVX-512 or AVX2 FMA.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List, Optional


def cpu_flags(cpuinfo: Optional[str] = None) -> FrozenSet[str]:
    """The flags of the first CPU in ``/proc/cpuinfo`` (or in the text given)."""
    if cpuinfo is None:
        return _this_cpu_flags()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def _this_cpu_flags() -> FrozenSet[str]:
    # read once per process: every ONNX Runtime session asks (edgecv.runtime.backends.ort), and an export's
    # sensitivity ranking and fallback search open hundreds
    try:
        return cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def matrix_units(flags: Iterable[str]) -> Dict[str, Optional[str]]:
    """Per precision, the fastest unit these flags offer (None: the precision has no fast path here)."""
    f = set(flags)
    int8 = "amx_int8" if "amx_int8" in f else "avx512_vnni" if "avx512_vnni" in f else \
        "avx_vnni" if "avx_vnni" in f else "avx2" if "avx2" in f else None
    bf16 = "amx_bf16" if "amx_bf16" in f else "avx512_bf16" if "avx512_bf16" in f else None
    fp32 = "avx512f" if "avx512f" in f else "avx2_fma" if {"avx2", "fma"} <= f else None
    return {"int8": int8, "bf16": bf16, "fp32": fp32}


def int8_sums_saturate(flags: Iterable[str]) -> bool:
    """Whether this x86 CPU's int8 dot products add pairs of u8 x s8 products in 16 bits, which saturate (AVX2 or
    AVX-512 without VNNI or AMX: ``vpmaddubsw``). ONNX Runtime widens them when told (edgecv tells it:
    edgecv.runtime.backends.ort); OpenVINO's int8 kernels do not, so an int8 model quantized with 8-bit weights
    loses accuracy there (tools/int8_saturation.py)."""
    return matrix_units(flags)["int8"] == "avx2"


def cpu_precisions(flags: Iterable[str]) -> List[str]:
    """The precisions a CPU runtime offers on a CPU with these flags, most compressed first."""
    units = matrix_units(flags)
    return ["int8"] + (["bf16"] if units["bf16"] else []) + ["fp32"]


def peak_probes(flags: Iterable[str]) -> Dict[str, List[str]]:
    """Per precision, the modes of ``tools/peak.c`` these flags can run: every unit that precision may use here
    (its peak is the fastest of them). AMX is listed beside VNNI and AVX-512 BF16: runtimes use either."""
    f = set(flags)
    fp32 = ["fp32-avx512"] if "avx512f" in f else ["fp32-avx2"] if {"avx2", "fma"} <= f else []
    int8 = (["int8-vnni"] if {"avx512f", "avx512_vnni"} <= f else []) + (["int8-amx"] if {"amx_tile", "amx_int8"} <= f else [])
    bf16 = (["bf16-avx512"] if {"avx512f", "avx512_bf16"} <= f else []) + (["bf16-amx"] if {"amx_tile", "amx_bf16"} <= f else [])
    return {"fp32": fp32, "int8": int8, "bf16": bf16}
