"""This machine's peak MAC rate per precision, and the CPU it is (for tools/bench_peers.py).

tools/peak.c is compiled here and run on every core at once, once per arithmetic unit the CPU has for a precision
(fp32 FMA; int8 AVX-512 VNNI and AMX; bf16 AVX-512 BF16 and AMX); a benchmark row is then reported as a share of
its own precision's peak, named. /proc/stat gives the CPU time others used during a run.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecv.runtime.backends.cpu import cpu_flags, peak_probes  # noqa: E402


def cpu_info() -> Dict:
    info = {"machine": platform.machine(), "cores": os.cpu_count(),
            "flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "sse4", "vnni", "f16c")))}
    try:
        info["model"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                             if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def busy_jiffies() -> int:
    """All CPUs' non-idle time from /proc/stat (clock ticks)."""
    vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(vals) - vals[3] - vals[4]  # minus idle and iowait


def build_probe(tmp: Path) -> Optional[Path]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    exe = tmp / "peak"
    r = subprocess.run([cc, "-O2", "-o", str(exe), str(ROOT / "tools" / "peak.c")], capture_output=True, text=True)
    return exe if r.returncode == 0 else None


def run_probe(exe: Path, mode: str, seconds: float) -> Optional[float]:
    """``mode``'s MAC rate on every core at once, summed (GMAC/s); None when the probe fails."""
    procs = [subprocess.Popen([str(exe), mode, str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) for _ in range(os.cpu_count() or 1)]
    try:
        rates = [float(p.communicate(timeout=60)[0]) for p in procs]
    except (ValueError, subprocess.SubprocessError):
        return None
    return sum(rates) / 1e9 if all(p.returncode == 0 for p in procs) else None


def peaks(seconds: float, exe: Optional[Path]) -> Dict[str, Dict]:
    """Per precision: the fastest unit's peak on this machine (GMAC/s, every core at once) and every unit probed."""
    out: Dict[str, Dict] = {}
    for precision, modes in peak_probes(cpu_flags()).items():
        rates = {m: run_probe(exe, m, seconds) for m in modes} if exe else {}
        good = {m: r for m, r in rates.items() if r}
        if not good:
            out[precision] = {"gmac_per_s": None, "unit": None, "probed": rates,
                              "how": "no C compiler" if exe is None else f"no {precision} unit measured here"}
            continue
        unit = max(good, key=good.get)
        out[precision] = {"gmac_per_s": good[unit], "unit": unit, "probed": rates,
                          "how": f"tools/peak.c {unit} on {os.cpu_count()} cores at once"}
    return out


def with_peak(row: Dict, peak: Dict[str, Dict]) -> Dict:
    """The row's GMAC/s as a share of its own precision's peak, and that peak's name."""
    p = peak.get(row["precision"]) or {}
    row["peak_unit"] = p.get("unit")
    row["peak_share"] = row["gmac_per_s"] / p["gmac_per_s"] if p.get("gmac_per_s") else None
    return row


def peak_lines(meta: Dict) -> List[str]:
    out = []
    for precision, p in meta["peaks"].items():
        probed = ", ".join(f"{m} {r:.0f}" if r else f"{m} failed" for m, r in p.get("probed", {}).items())
        out.append(f"- {precision}: " + (f"{p['gmac_per_s']:.0f} GMAC/s, {p['how']}" if p.get("gmac_per_s") else p["how"])
                   + (f" (probed: {probed})" if probed else ""))
    return out
