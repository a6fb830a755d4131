"""Benchmark verdicts that hold from run to run (tools/bench_peers.py, edgecv.runtime.latency): the bootstrap
interval of a speed ratio on synthetic timings, the verdict it supports, comparing two runs, and each row's peak
chosen by its precision from the CPU's feature flags."""
import sys

import numpy as np
import pytest
from conftest import ROOT

from edgecv.runtime.backends.cpu import cpu_precisions, matrix_units, peak_probes
from edgecv.runtime.latency import drift, ratio_interval, speed_verdict

sys.path.insert(0, str(ROOT / "tools"))
import bench_peers  # noqa: E402
import machine_peaks  # noqa: E402
import peers_report  # noqa: E402

ZEN4 = "fpu sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_vnni avx512_bf16 avx_vnni"
SAPPHIRE_RAPIDS = ZEN4 + " amx_tile amx_int8 amx_bf16"
ICE_LAKE = "sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni"
HASWELL = "sse4_2 avx avx2 fma"
ALDER_LAKE = "sse4_2 avx avx2 fma avx_vnni"


def test_the_interval_covers_the_true_ratio_and_machine_drift_cancels():
    rng = np.random.default_rng(1)
    machine = np.linspace(1.0, 1.8, 20)  # the machine slows down 80% over the run: both candidates feel it
    peer = 2.0 * machine * np.exp(rng.normal(0, 0.02, 20))
    ours = 1.6 * machine * np.exp(rng.normal(0, 0.02, 20))  # truly 1.25x faster
    ci = ratio_interval(peer, ours)
    assert ci["lo"] < 1.25 < ci["hi"] and ci["hi"] - ci["lo"] < 0.05 and ci["rounds"] == 20
    # unpaired, the drift alone would make the ratio of the medians swing: paired, it is gone
    assert abs(ci["ratio"] - 1.25) < 0.02
    assert drift(peer) > 0.7


def test_noisier_rounds_give_a_wider_interval_and_identical_ones_a_point():
    rng = np.random.default_rng(2)
    base = np.full(20, 3.0)
    quiet = ratio_interval(base, base / 1.1 * np.exp(rng.normal(0, 0.01, 20)))
    noisy = ratio_interval(base, base / 1.1 * np.exp(rng.normal(0, 0.15, 20)))
    assert (noisy["hi"] - noisy["lo"]) > 5 * (quiet["hi"] - quiet["lo"])
    same = ratio_interval([2.0] * 8, [1.0] * 8)
    assert same["ratio"] == pytest.approx(2.0) and same["lo"] == pytest.approx(2.0) and same["hi"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="paired rounds"):
        ratio_interval([1.0, 2.0], [1.0])


@pytest.mark.parametrize("lo,hi,verdict", [
    (1.10, 1.30, "ahead"), (0.97, 1.04, "parity"), (0.80, 0.90, "behind"),
    (1.02, 1.12, "parity or ahead"), (0.90, 0.99, "behind or parity"), (0.80, 1.30, "behind, parity or ahead"),
    (1.0 / 1.05, 1.05, "parity"),  # the band's edges belong to parity
])
def test_a_verdict_only_where_the_whole_interval_says_so(lo, hi, verdict):
    assert speed_verdict(lo, hi) == verdict


def test_compare_says_which_verdicts_held():
    def run(verdicts):
        return {"meta": {"date": "d"}, "verdicts": [{"model": m, "verdict": v, "ratio": 1.0, "ci": [0.9, 1.1]}
                                                   for m, v in verdicts.items()]}

    old = run({"lite0": "ahead", "resnet18": "parity", "gone": "ahead"})
    new = run({"lite0": "ahead", "resnet18": "parity or ahead", "added": "parity"})
    rows = {r["model"]: r for r in peers_report.compare(old, new)}
    assert rows["lite0"]["held"] and not rows["resnet18"]["held"]
    assert not rows["gone"]["held"] and rows["gone"]["new"] is None and not rows["added"]["held"]
    text = peers_report.compare_md(list(rows.values()), old["meta"], new["meta"])
    assert "1 of 4 verdicts held" in text and "| resnet18 | parity |" in text


def test_an_old_json_without_intervals_is_refused_by_name(tmp_path, capsys):
    p = tmp_path / "old.json"
    for text, said in [('{"verdicts": [{"model": "x", "ratio": 1.1}]}', "old.json: no verdicts with intervals"),
                       ('{"verdicts": [1]}', "old.json: no verdicts with intervals"),
                       ("{not json", "old.json: not a readable peers.json")]:
        p.write_text(text)
        with pytest.raises(SystemExit) as e:
            peers_report.read_run(str(p))
        assert e.value.code == 2 and said in capsys.readouterr().err  # a user error, named


@pytest.mark.parametrize("flags,precisions,int8,bf16,probes", [
    (SAPPHIRE_RAPIDS, ["int8", "bf16", "fp32"], "amx_int8", "amx_bf16",
     {"fp32": ["fp32-avx512"], "int8": ["int8-vnni", "int8-amx"], "bf16": ["bf16-avx512", "bf16-amx"]}),
    (ZEN4, ["int8", "bf16", "fp32"], "avx512_vnni", "avx512_bf16",
     {"fp32": ["fp32-avx512"], "int8": ["int8-vnni"], "bf16": ["bf16-avx512"]}),
    (ICE_LAKE, ["int8", "fp32"], "avx512_vnni", None, {"fp32": ["fp32-avx512"], "int8": ["int8-vnni"], "bf16": []}),
    (ALDER_LAKE, ["int8", "fp32"], "avx_vnni", None, {"fp32": ["fp32-avx2"], "int8": [], "bf16": []}),
    (HASWELL, ["int8", "fp32"], "avx2", None, {"fp32": ["fp32-avx2"], "int8": [], "bf16": []}),
])
def test_precisions_and_peaks_follow_the_cpu_flags(flags, precisions, int8, bf16, probes):
    f = flags.split()
    assert cpu_precisions(f) == precisions
    units = matrix_units(f)
    assert units["int8"] == int8 and units["bf16"] == bf16
    assert peak_probes(f) == probes


def test_each_row_is_measured_against_its_own_precisions_peak():
    peak = {"fp32": {"gmac_per_s": 100.0, "unit": "fp32-avx512"}, "int8": {"gmac_per_s": 1600.0, "unit": "int8-amx"},
            "bf16": {"gmac_per_s": None, "unit": None}}
    rows = [machine_peaks.with_peak({"precision": bench_peers.precision_of(b), "gmac_per_s": 80.0}, peak)
            for b in ("openvino nncf int8", "openvino default (bf16)", "onnxruntime fp32")]
    assert [r["peak_unit"] for r in rows] == ["int8-amx", None, "fp32-avx512"]
    assert rows[0]["peak_share"] == pytest.approx(0.05) and rows[1]["peak_share"] is None
    assert rows[2]["peak_share"] == pytest.approx(0.8)


def test_the_peak_probe_runs_every_mode_this_cpu_offers(tmp_path):
    exe = bench_peers.build_probe(tmp_path)
    if exe is None:
        pytest.skip("no C compiler")
    got = bench_peers.peaks(0.05, exe)
    for precision, modes in peak_probes(open("/proc/cpuinfo").read().split()).items():
        for m in modes:
            assert got[precision]["probed"][m] > 1.0, (precision, m)  # GMAC/s: any real core does far more
    if got["int8"]["gmac_per_s"] and got["fp32"]["gmac_per_s"]:
        assert got["int8"]["gmac_per_s"] > got["fp32"]["gmac_per_s"]  # 4x the lanes per instruction


def test_compare_two_finished_runs_from_the_command_line(tmp_path):
    import json
    import subprocess

    def run(date, verdict, ratio):
        return {"meta": {"date": date}, "rows": [], "verdicts": [
            {"model": "efficientnet_lite0", "verdict": verdict, "ratio": ratio, "ci": [ratio - 0.02, ratio + 0.02]}]}

    (tmp_path / "a.json").write_text(json.dumps(run("2026-12-05 06:00", "ahead", 1.20)))
    (tmp_path / "b.json").write_text(json.dumps(run("2026-12-05 07:00", "ahead", 1.17)))
    r = subprocess.run([sys.executable, "tools/bench_peers.py", "--compare", str(tmp_path / "a.json"), "--new",
                        str(tmp_path / "b.json"), "--out", str(tmp_path / "cmp")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| efficientnet_lite0 | ahead | 1.20x [1.18, 1.22] | ahead | 1.17x [1.15, 1.19] | yes |" in r.stdout
    assert (tmp_path / "cmp" / "compare.md").read_text() == r.stdout.rstrip("\n") + "\n"
    bad = subprocess.run([sys.executable, "tools/bench_peers.py", "--new", str(tmp_path / "b.json")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--new needs --compare" in bad.stderr
