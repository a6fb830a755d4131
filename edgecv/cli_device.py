"""Device commands: ``build``, ``bench``, ``profile``, ``run``. They import no torch."""
from __future__ import annotations

import json
import sys

import click

from edgecv.cli import cli


@cli.command()
@click.argument("bundle")
@click.option("--int8/--no-int8", default=True, show_default=True, help="int8 engine (Q/DQ ONNX; with --dla: calibration cache).")
@click.option("--fp16", is_flag=True, help="Also allow fp16 kernels (TensorRT <= 10.x).")
@click.option("--dla", "dla_core", type=int, default=-1, help="Build for DLA core N (Jetson Xavier/Orin).")
@click.option("--workspace", "workspace_mb", type=int, default=1024, show_default=True, help="Workspace pool, MB.")
@click.option("--timing-cache", default=None, help="Timing cache file, reused across builds.")
def build(bundle, int8, fp16, dla_core, workspace_mb, timing_cache):
    """Build (or reuse from the cache) the TensorRT engine for BUNDLE on this device."""
    from edgecv.runtime.engine_build import build_engine_for_bundle

    info = build_engine_for_bundle(bundle, int8, fp16, dla_core, workspace_mb, timing_cache)
    click.echo(json.dumps(info, indent=2))


@cli.command()
@click.argument("target")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(["auto", "tensorrt", "onnxruntime"]))
@click.option("--batch", "batches", default="1", show_default=True, help="Comma list of batch sizes, e.g. 1,8.")
@click.option("--warmup", default=20, show_default=True)
@click.option("--iters", default=200, show_default=True)
@click.option("--precision", default=None, help="Artefact precision (fp32|int8); default: the manifest's choice.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
@click.option("--json", "as_json", is_flag=True)
def bench(target, backend, batches, warmup, iters, precision, threads, as_json):
    """Latency p50/p90/p99 and throughput of TARGET (a bundle or an .onnx file) per batch size."""
    from edgecv.runtime.bench import bench as run_bench

    sizes = [int(b) for b in batches.split(",") if b.strip()]
    res = run_bench(target, backend, sizes, warmup, iters, precision, threads)
    if as_json:
        click.echo(json.dumps(res))
        return
    from edgecv.utils.table import print_rows

    rows = [{"batch": b, **{k: v for k, v in s.items() if k in ("p50_ms", "p90_ms", "p99_ms", "throughput")}}
            for b, s in res["batches"].items()]
    print_rows(rows, ["batch", "p50_ms", "p90_ms", "p99_ms", "throughput"],
               f"{res['backend']} {res['artifact']} ({res['precision']})")


@cli.command()
@click.argument("target")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(["auto", "tensorrt", "onnxruntime"]))
@click.option("--iters", default=100, show_default=True)
@click.option("--batch", default=1, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--top", default=20, show_default=True, help="Rows in the table and the chart.")
@click.option("-o", "--out", "out_dir", default=None, help="Write profile.json (trtexec shape), profile.csv, profile.png.")
@click.option("--json", "as_json", is_flag=True)
def profile(target, backend, iters, batch, threads, top, out_dir, as_json):
    """Per-layer latency of TARGET, sorted by time, mapped back to PyTorch modules where names allow."""
    from edgecv.runtime.profile import profile as run_profile
    from edgecv.runtime.profile import trtexec_json

    res = run_profile(target, backend, iters, batch=batch, out_dir=out_dir, threads=threads, top=top)
    if as_json:
        click.echo(json.dumps(trtexec_json(res)))
        return
    from edgecv.utils.table import print_rows

    print_rows([{**r, "ms": r["averageMs"], "%": r["percentage"]} for r in res["layers"][:top]],
               ["name", "op", "torch_module", "ms", "%"], f"per-layer latency ({res['backend']}, {res['artifact']})")
    msg = (f"sum of layers {res['sum_layers_ms']:.3f} ms vs end-to-end {res['end_to_end_ms']:.3f} ms "
           f"({res['sum_ratio']:.1%})")
    click.echo(msg if res["sum_within_tolerance"] else msg + " -- NOT within 10%: the gap is framework overhead "
               "outside the layers (input/output copies, scheduling)")


@cli.command()
@click.argument("target")
@click.option("--source", required=True, help="/dev/videoN, N, csi://N, rtsp://..., a video file, an image folder, or a GStreamer pipeline.")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(["auto", "tensorrt", "onnxruntime"]))
@click.option("--json", "as_json", is_flag=True, help="One JSON line per frame.")
@click.option("--display", is_flag=True, help="Show annotated frames when a display exists.")
@click.option("--record", default=None, help="Write the annotated video (mp4).")
@click.option("--topk", default=1, show_default=True)
@click.option("--smooth", default=1, show_default=True, help="Average probabilities over the last N frames.")
@click.option("--max-frames", type=int, default=None)
@click.option("--loop", is_flag=True, help="Loop file and folder sources.")
@click.option("--realtime", is_flag=True, help="Pace files like a live camera (latest frame only).")
@click.option("--threads", type=int, default=None)
@click.option("--max-failures", default=5, show_default=True, help="Reconnect attempts before giving up.")
@click.option("--resize", type=click.Choice(["auto", "area", "fast"]), default="auto", show_default=True,
              help="How frames are shrunk to the model's resize size. area: INTER_AREA on the whole frame; fast: "
                   "fitted blur + warp of the crop window only, ~4x cheaper on VGA; auto: fast from a 1.45x shrink "
                   "up, area below, whichever is closer to training (99.2% top-1 agreement on the ImageNet samples).")
@click.option("--decode-threads", type=click.IntRange(min=1), default=None,
              help="FFmpeg decoder threads for files and RTSP [default: 1 when the model runs on the CPU].")
@click.option("--camera-resize/--no-camera-resize", default=True, show_default=True,
              help="csi://: scale frames to the model's resize size in the Jetson's VIC, not on the CPU.")
def run(target, source, backend, as_json, display, record, topk, smooth, max_frames, loop, realtime, threads,
        max_failures, resize, decode_threads, camera_resize):
    """Classify frames from a camera, stream, video file or image folder with TARGET (a bundle)."""
    from edgecv.runtime.run_loop import run as run_loop

    summary = run_loop(target, source, backend, topk, smooth, max_frames, as_json, display, record, loop, realtime,
                       threads, max_failures, resize=resize, decode_threads=decode_threads,
                       camera_resize=camera_resize)
    out = {k: v for k, v in summary.items() if k != "latency_ms"}
    lat = summary["latency_ms"].get("pre_infer_post", {})
    line = (f"frames {out['frames']}  fps {out['fps']:.1f}  dropped {out['dropped']}  reconnects {out['reconnects']}  "
            f"latency p50 {lat.get('p50_ms', 0):.3f} ms p90 {lat.get('p90_ms', 0):.3f} ms p99 {lat.get('p99_ms', 0):.3f} ms")
    click.echo(json.dumps({"summary": summary}) if as_json else line, err=as_json)
    if summary["error"]:
        click.echo(f"error: {summary['error']}", err=True)
        sys.exit(3)
