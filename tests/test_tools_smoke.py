"""tools/loop_overhead.py and tools/soak.py on the tiny bundle: a few frames so the tools cannot rot (their
measurements are not asserted: ratios and memory growth are numbers for the closing note, not for CI)."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT


def test_loop_overhead_smoke(tiny_bundle):
    r = subprocess.run([sys.executable, "tools/loop_overhead.py", str(tiny_bundle), "--frames", "30", "--rounds", "2",
                        "--size", "64x48,40x30", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout)
    assert [row["frame_size"] for row in rows] == ["64x48", "40x30"]
    for row in rows:
        assert len(row["loop_rounds_ms"]) == 2 and len(row["bare_rounds_ms"]) == 3
        st = row["stages_mean_ms"]
        parts = st["preprocess"] + st["infer"] + st["postprocess"]
        assert abs(parts - st["pre_infer_post"]) < 1e-6 * max(1.0, parts)
        assert abs(row["ratio"] - row["loop_pre_infer_post_mean_ms"] / row["bare_run_mean_ms"]) < 1e-9


def test_soak_smoke(tiny_bundle):
    r = subprocess.run([sys.executable, "tools/soak.py", str(tiny_bundle), "--frames", "600"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["frames"] == 600 and out["error"] is None
    assert out["growth_mb"] == out["rss_after_mb"] - out["rss_before_mb"]


@pytest.mark.slow  # a benchmark tool, not the product: python3 -m pytest -m slow (docs/benchmarks.md)
def test_multicam_bench_smoke(tiny_bundle, tmp_path):
    """Every stage of tools/multicam_bench.py runs on the tiny bundle (one small clip, one camera at most in real
    time); the derived columns are the stated functions of the measured ones."""
    import glob
    import tempfile

    clips = lambda: set(glob.glob(f"{tempfile.gettempdir()}/tmp*/photos.mp4"))  # noqa: E731
    before = clips()
    out = tmp_path / "mc.json"
    r = subprocess.run([sys.executable, "tools/multicam_bench.py", str(tiny_bundle), "--sizes", "64x48",
                        "--max-cams", "1", "--seconds", "1.5", "--frames", "20", "--json", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert row["frames"] == "64x48" and set(row["batched_trials"]) == {"1"}
    u = row["unpaced"]
    for k in ("batched_fps", "separate_fps", "sequential_fps", "least_core_ms_per_frame"):
        assert u[k] > 0, k
    assert abs(u["vs_best_other"] - u["batched_fps"] / max(u["separate_fps"], u["sequential_fps"])) < 1e-9
    least = u["cores"] * 1e3 / u["engine_workers_b4_fps"] + u["decode_preprocess_ms"]
    assert abs(u["least_core_ms_per_frame"] - least) < 1e-9
    # the tiny model's short runs may be too close to tell apart: then the core-time columns are left out, said so
    if "ceiling_vs_separate" in u:
        assert u["batched_core_ms_per_frame"] > 0 and u["separate_busy_cores"] > 0
        assert abs(u["ceiling_vs_separate"] - u["separate_core_ms_per_frame"] / least) < 1e-9
    else:
        assert "too short to tell apart" in r.stderr and "| n/a |" in r.stdout
    assert u["batched_window_fps"] > 0  # one loop: its own first to last frame
    if u["separate_window_fps"]:  # 20 frames of a tiny model: separate processes may never classify at once
        assert abs(u["window_vs_separate"] - u["batched_window_fps"] / u["separate_window_fps"]) < 1e-9
        assert f"({u['window_vs_separate']:.2f}x) |" in r.stdout
    else:
        assert "window_vs_separate" not in u and r.stdout.rstrip().endswith("| n/a |")
    assert "| 64x48 |" in r.stdout
    assert clips() == before  # its temporary clip is removed


def test_multicam_common_window_counts_only_while_every_loop_runs(tmp_path):
    """Three loops' JSON lines: frames are counted only between the latest first frame and the earliest last one."""
    sys.path.insert(0, str(ROOT / "tools"))
    from multicam_bench import common_window_fps

    def loop(name, t0, t1, fps):
        n = int(round((t1 - t0) * fps)) + 1
        path = tmp_path / name
        path.write_text("".join(json.dumps({"camera": name, "capture_time": t0 + i / fps}) + "\n" for i in range(n)))
        return path

    # a runs 0-10 s at 100 frames/s, b 2-12 s at 50, c 4-9 s at 10: all three run from 4 to 9 s
    files = [loop("a", 1000.0, 1010.0, 100), loop("b", 1002.0, 1012.0, 50), loop("c", 1004.0, 1009.0, 10)]
    assert common_window_fps(files) == pytest.approx((501 + 251 + 51) / 5.0, rel=1e-6)
    assert common_window_fps(files[:1]) == pytest.approx(1001 / 10.0)
    late = loop("d", 1020.0, 1021.0, 10)  # starts after a has ended: never all running
    assert common_window_fps([files[0], late]) is None
    (tmp_path / "empty").write_text("")
    assert common_window_fps([files[0], tmp_path / "empty"]) is None


@pytest.mark.slow  # a benchmark tool, not the product: python3 -m pytest -m slow (docs/benchmarks.md)
def test_prune_tradeoff_smoke(tmp_path):
    """tools/prune_tradeoff.py end to end on a MobileNetV2 at 96 px over the shared Caltech-101 photographs (16 fit,
    16 judged, one ratio per method, 4 blocks removed, one smaller input size): the table's speed-up column is the ratio of its p50
    columns, and the smaller input runs at its own size."""
    import shutil

    import torch
    import yaml
    from torchvision.models import mobilenet_v2

    from edgecv.models.checkpoint import make_checkpoint, save_checkpoint

    recipe = yaml.safe_load((ROOT / "recipes" / "transfer_lite0_caltech101.yaml").read_text())
    recipe["model"] = {"name": "mobilenet_v2", "num_classes": 101}
    recipe["data"].update(path=str(ROOT / recipe["data"]["path"]), input_size=96, resize=110)
    recipe["export"]["calib"] = str(ROOT / recipe["export"]["calib"])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    torch.manual_seed(0)
    classes = sorted(p.name for p in (ROOT / recipe["data"]["path"]).iterdir() if p.is_dir())
    save_checkpoint(make_checkpoint(mobilenet_v2(num_classes=101).eval(), "mobilenet_v2", {}, classes,
                                    {"input_size": 96}), tmp_path / "m.pt")
    r = subprocess.run([sys.executable, "tools/prune_tradeoff.py", "--checkpoint", tmp_path / "m.pt", "--recipe",
                        tmp_path / "r.yaml", "--ratios", "0.5", "--drop-blocks", "4", "--sizes", "64", "--fit", "16",
                        "--eval", "16", "--out", tmp_path / "out"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "tradeoff.json").read_text())
    assert [(x["method"], x["ratio"], x["size"]) for x in rows] == [
        ("unpruned", 0, 96), ("reconstruct", 0.5, 96), ("magnitude", 0.5, 96), ("drop blocks", 4, 96),
        ("input size", 0, 64)]
    assert abs(rows[4]["mmac"] / rows[0]["mmac"] - (64 / 96) ** 2) < 0.05  # MACs scale with the pixels
    for x in rows:
        assert abs(x["speedup_vs_unpruned_int8"] - rows[0]["int8_p50_ms"] / x["int8_p50_ms"]) < 1e-9
        assert 0 <= x["agreement"] <= 1 and x["mmac"] <= rows[0]["mmac"] and x["judged"] == 16
    assert (tmp_path / "out" / "tradeoff.png").stat().st_size > 1000
    shutil.rmtree(tmp_path / "out")


def test_prune_tradeoff_judges_a_random_sample_of_classes(tmp_path, capsys):
    """The held-out split lists photographs folder by folder: its first 40 are one or two classes (where pruning
    looked 20 points kinder than on all of them). The tool judges on a seeded random sample across the classes."""
    sys.path.insert(0, str(ROOT / "tools"))
    import yaml
    from prune_tradeoff import main, photographs

    recipe = yaml.safe_load((ROOT / "recipes" / "transfer_lite0_caltech101.yaml").read_text())
    recipe["data"].update(path=str(ROOT / recipe["data"]["path"]), input_size=32, resize=32)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    fit, x, y = photographs(str(tmp_path / "r.yaml"), 4, 40)
    assert fit.shape == (4, 3, 32, 32) and x.shape == (40, 3, 32, 32)
    assert len(set(y.tolist())) >= 15
    again = photographs(str(tmp_path / "r.yaml"), 4, 40)
    assert (again[2] == y).all() and (again[1] == x).all()
    for flag, value, says in (("--eval", "-3", "--eval must be 0"), ("--fit", "0", "--fit must be at least 1"),
                              ("--sizes", "160,4", "--sizes: 4 is below 8"),
                              ("--drop-blocks", "0", "--drop-blocks: 0 is below 1")):
        assert main([flag, value]) == 2  # in this process: the smoke test above runs it as a script
        err = capsys.readouterr().err
        assert says in err, err


@pytest.mark.slow  # a benchmark tool, not the product: python3 -m pytest -m slow (docs/benchmarks.md)
def test_weight_rounding_smoke(tmp_path):
    """tools/weight_rounding.py end to end on pretrained Lite0 at 96 px (8 judged per folder, 8 calibration images,
    two of the three target forms): every rounding for each, agreement a fraction; a bad count or target is one
    error line and exit 2."""
    r = subprocess.run([sys.executable, "tools/weight_rounding.py", "--images", "8", "--calib", "8", "--size", "96",
                        "--targets", "tensorrt,onnxruntime", "--out", tmp_path / "out"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((tmp_path / "out" / "rounding.json").read_text())
    rows = got["rows"]
    assert got["size"] == 96 and [(x["rounding"], x["target"]) for x in rows] == [
        (rounding, t) for rounding in ("nearest", "nearest + bias correction", "gptq") for t in ("tensorrt", "onnxruntime")]
    assert all(0 <= x["caltech101"] <= 1 for x in rows)
    # the share of the error 99% allows: 1.0 exactly where agreement is already 99% or more
    assert all(0 <= x["caltech101 scale"] <= 1 and (x["caltech101 scale"] == 1.0) == (x["caltech101"] >= 0.99)
               for x in rows)
    assert "at 96 px" in (tmp_path / "out" / "rounding.md").read_text()
    for flag, value in (("--images", "0"), ("--targets", "tensorrt,trt")):
        bad = subprocess.run([sys.executable, "tools/weight_rounding.py", flag, value], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and flag in bad.stderr, bad.stderr


@pytest.mark.slow  # a benchmark tool, not the product: python3 -m pytest -m slow (docs/benchmarks.md)
def test_train_speed_smoke():
    """tools/train_speed.py at 32 px, batch 2: one row per mode this CPU runs (bfloat16 only where it is native),
    each speed-up the ratio of the baseline's time to its own."""
    from edgecv.train.engine import cpu_has_bf16

    r = subprocess.run([sys.executable, "tools/train_speed.py", "--batch", "2", "--size", "32", "--rounds", "1",
                        "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout)
    native = cpu_has_bf16()
    assert [x["mode"] for x in rows][:2] == ["NCHW fp32 (before)", "channels-last fp32"]
    assert len(rows) == (3 if native else 2)
    for x in rows:
        for k in ("train_step", "frozen_bn_step", "eval_forward"):
            assert x[f"{k}_speedup"] == rows[0][f"{k}_s"] / x[f"{k}_s"]
    bad = subprocess.run([sys.executable, "tools/train_speed.py", "--rounds", "0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "at least 1" in bad.stderr


@pytest.mark.slow  # a benchmark tool, not the product: python3 -m pytest -m slow (docs/benchmarks.md)
def test_prune_rounding_smoke(tmp_path, imagenet_dir):
    """tools/prune_rounding.py on a random MobileNetV2 at 64 px: each ratio x multiple is pruned, judged, and timed
    twice against the unpruned int8 on both CPU runtimes (the speed-ups are not asserted: numbers for the docs)."""
    from conftest import mobilenet_caltech_source

    recipe, ckpt = mobilenet_caltech_source(tmp_path, imagenet_dir)
    r = subprocess.run([sys.executable, "tools/prune_rounding.py", "--checkpoint", str(ckpt), "--recipe", str(recipe),
                        "--ratios", "0.5", "--round-to", "8,16", "--fit", "16", "--eval", "40", "--out",
                        str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["key"]: row for row in json.loads((tmp_path / "o" / "rounding.json").read_text())}
    assert list(rows) == ["unpruned", "0.5 r8", "0.5 r16"]
    assert rows["unpruned"]["onnxruntime_speedup"] == [1.0, 1.0] == rows["unpruned"]["openvino_speedup"]
    for key in ("0.5 r8", "0.5 r16"):
        row = rows[key]
        assert row["mmac"] < 0.7 * rows["unpruned"]["mmac"] and row["judged"] == 40 and 0 <= row["top1"] <= 1
        for t in ("onnxruntime", "openvino"):
            assert all(s > 0 for s in row[f"{t}_speedup"]) and len(row[f"{t}_ms"]) == 2
    assert "| 0.5 r16 |" in (tmp_path / "o" / "rounding.md").read_text()


@pytest.mark.slow  # a benchmark tool, not the product: python3 -m pytest -m slow (docs/benchmarks.md)
def test_int8_saturation_smoke(tmp_path):
    """tools/int8_saturation.py end to end on pretrained Lite0 (10 photographs each way, 10 timed runs): every way of
    running each file, in order; the exact runs are references, not timed; fp32 agrees with itself."""
    r = subprocess.run([sys.executable, "tools/int8_saturation.py", "--images", "10", "--iters", "10", "--out",
                        tmp_path], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((tmp_path / "int8_saturation.json").read_text())
    runs = [row["run"] for row in got["rows"]]
    ways = ["onnxruntime, edgecv's options", "onnxruntime, exact (no optimisation)", "openvino"]
    assert runs == ["onnxruntime, its defaults", *ways, *(f"{tag}: {w}" for tag in ("7-bit stem", "7-bit all")
                                                          for w in ways), "fp32"]
    for row in got["rows"]:
        assert 0 <= row["agreement"] <= 1 and row["mean_kl"] >= 0
        assert (row["p50_ms"] is None) == ("exact" in row["run"])
    fp32 = got["rows"][-1]
    assert fp32["agreement"] == 1.0 and fp32["mean_kl"] == pytest.approx(0, abs=1e-9) and fp32["speed_vs_fp32"] == 1.0
    assert got["images"] == 10 and "| fp32 |" in (tmp_path / "int8_saturation.md").read_text()


@pytest.mark.slow  # a benchmark tool, not the product: python3 -m pytest -m slow (docs/benchmarks.md)
def test_bench_ranking_smoke(tmp_path):
    """tools/bench_ranking.py on pretrained Lite0, 2 layers, 8 photographs: both ways per target, their files
    compared byte for byte (the tool exits non-zero when they differ); a bad count is one usage line."""
    r = subprocess.run([sys.executable, "tools/bench_ranking.py", "--layers", "2", "--images", "8", "--out", tmp_path],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((tmp_path / "bench_ranking.json").read_text())
    assert got["layers"] == 2 and got["of_layers"] == 50 and got["images"] == 8
    assert set(got["targets"]) == {"tensorrt", "onnxruntime"}
    for per in got["targets"].values():
        for way in per.values():
            assert 0 < way["quantize"] < way["step"]
    assert (tmp_path / "bench_ranking.md").read_text().count("| tensorrt |") == 2
    bad = subprocess.run([sys.executable, "tools/bench_ranking.py", "--layers", "0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "at least 1" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow  # a benchmark tool, not the product: python3 -m pytest -m slow (docs/benchmarks.md)
def test_block_reconstruction_smoke(tmp_path):
    """tools/block_reconstruction.py end to end on pretrained Lite0 at 96 px (8 judged per folder, 8 calibration
    images, 3 steps a unit): every unit is fitted once, in order, and both rows judge every folder; a bad value is
    a usage error."""
    r = subprocess.run([sys.executable, "tools/block_reconstruction.py", "--images", "8", "--calib", "8", "--iters",
                        "3", "--size", "96", "--out", tmp_path], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((tmp_path / "reconstruction.json").read_text())
    assert [t["unit"] for t in got["trace"]] == list(range(18))  # the stem, 16 blocks, the head
    assert len(got["rows"]) == 2 and got["size"] == 96 and got["calib"] == 8
    for row in got["rows"]:
        for k in ("imagenette", "imagenet-samples", "caltech101"):
            assert 0 <= row[k] <= 1 and 0 <= row[f"{k} scale"] <= 1
    bad = subprocess.run([sys.executable, "tools/block_reconstruction.py", "--qdrop", "2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--qdrop" in bad.stderr, bad.stderr
