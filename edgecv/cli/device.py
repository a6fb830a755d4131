"""Device commands: ``build``, ``bench``, ``profile``, ``run``. They import no torch."""
from __future__ import annotations

import json
import sys
from dataclasses import replace

import click

from edgecv.bundle.manifest import PRECISIONS
from edgecv.cli.types import BackendChoice, FiniteRange, new_dir_or_missing, options_from
from edgecv.utils.limits import FPS_RANGE, MAX_SMOOTH, MAX_THREADS, MAX_TIMEOUT_S


class BatchList(click.ParamType):
    """A comma list of positive batch sizes, e.g. ``1,8``."""

    name = "N[,N...]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        parts = [p.strip() for p in str(value).split(",") if p.strip()]
        try:
            sizes = [int(p) for p in parts]
        except ValueError:
            self.fail(f"{value!r}: expected a comma list of positive integers, e.g. 1,8", param, ctx)
        if not sizes or any(b < 1 or b > 4096 for b in sizes):
            self.fail(f"{value!r}: batch sizes must be 1..4096", param, ctx)
        return sizes


class Dims(click.ParamType):
    """An input's dimensions after the batch, ``CxHxW`` (as trtexec's ``--shapes``), e.g. ``3x224x224``."""

    name = "CxHxW"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            dims = tuple(int(p) for p in str(value).lower().split("x"))
        except ValueError:
            self.fail(f"{value!r}: expected dimensions after the batch joined by x, e.g. 3x224x224", param, ctx)
        if any(d < 1 for d in dims):
            self.fail(f"{value!r}: every dimension must be >= 1", param, ctx)
        return dims


def shape_option(f):
    return click.option("--shape", type=Dims(), default=None,
                        help="The input's dimensions after the batch where the model leaves them dynamic, e.g. "
                             "3x224x224 (trtexec's --shapes).")(f)


def dla_option(f):
    return click.option("--dla", "dla_core", type=click.IntRange(min=-1), default=-1, show_default=True,
                        help="Run the TensorRT engine built for DLA core N (Jetson Xavier/Orin); -1: the GPU.")(f)


@click.command()
@click.argument("bundle")
@click.option("--int8/--no-int8", default=True, show_default=True,
              help="int8 engine (Q/DQ ONNX; with --dla: calibration cache).")
@click.option("--fp16/--no-fp16", default=None, help="Allow fp16 kernels (TensorRT <= 10.x) [default: as exported].")
@click.option("--dla", "dla_core", type=click.IntRange(min=-1), default=-1,
              help="Build for DLA core N (Jetson Xavier/Orin): static shapes, int8 or fp16 only.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=None,
              help="Largest batch [default: as exported; DLA: 1, static].")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=16), default=1024, show_default=True,
              help="Workspace pool, MB.")
@click.option("--opt-level", type=click.IntRange(-1, 5), default=-1, show_default=True,
              help="Builder optimisation level (TensorRT >= 8.6); -1: TensorRT's default.")
@click.option("--timing-cache", default=None,
              help="Timing cache file [default: one per TensorRT version and GPU, in the engine cache].")
def build(bundle, int8, **flags):
    """Build (or reuse from the cache) the TensorRT engine for BUNDLE on this device."""
    from pathlib import Path

    from edgecv.runtime.tensorrt.engine_build import BuildSettings, build_engine_for_bundle

    s = BuildSettings(**options_from(BuildSettings, flags, keep_none=True))
    info = build_engine_for_bundle(bundle, int8, s if not s.timing_cache else replace(s, timing_cache=Path(s.timing_cache)))
    click.echo(json.dumps(info, indent=2))


@click.command()
@click.argument("bundle")
@click.option("--backend", default="auto", show_default=True, type=BackendChoice(),
              help="Check one target only; auto: every target that can run here.")
@click.option("--iters", type=click.IntRange(min=1), default=50, show_default=True, help="Latency runs per precision.")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Record the choice on this device, for run, bench, eval and profile to use by default.")
@click.option("--json", "as_json", is_flag=True)
@dla_option
def verify(bundle, backend, iters, record, as_json, dla_core):
    """On the device: run BUNDLE's golden vectors through every precision this device can run, compare with
    the fp32 logits from export, and choose the fastest within the bundle's fidelity budget.

    Exit status 1 when no precision is within the budget (nothing is recorded then).
    """
    from edgecv.runtime.acceptance.verify import verify as run_verify

    rep = run_verify(bundle, backend, iters=iters, record=record, dla_core=dla_core)
    if as_json:
        click.echo(json.dumps(rep))
    else:
        from edgecv.utils.table import print_rows

        rows = [{**r, "agreement": r.get("agreement"), "p50_ms": r.get("p50_ms")} for r in rep["candidates"]]
        print_rows(rows, ["target", "precision", "status", "agreement", "top1", "max_abs_err", "p50_ms", "p99_ms",
                          "reason"], f"edgecv verify {bundle} ({rep['golden']['n']} golden vectors)")
        c = rep["chosen"]
        if c:
            click.echo(f"chosen: {c['target']} {c['precision']} ({c['p50_ms']:.3f} ms, agreement {c['agreement']:.1%})"
                       + (f"; recorded in {rep['recorded']}" if rep.get("recorded") else ""))
    if not rep["chosen"]:
        ran = [r for r in rep["candidates"] if "agreement" in r]
        why = "no precision is within the fidelity budget" if ran else "nothing could run on this device (" + \
            "; ".join(f"{r['target']} {r['precision']}: {r['reason']}" for r in rep["candidates"]) + ")"
        click.echo(f"error: {why}; nothing recorded", err=True)
    sys.exit(0 if rep["chosen"] else 1)


@click.command()
@click.argument("target")
@click.option("--backend", default="auto", show_default=True, type=BackendChoice())
@click.option("--batch", "batches", type=BatchList(), default="1", show_default=True,
              help="Comma list of batch sizes, e.g. 1,8.")
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--iters", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Artefact precision; default: the manifest's choice.")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--json", "as_json", is_flag=True)
@shape_option
@dla_option
def bench(target, backend, as_json, **flags):
    """Latency p50/p90/p99 and throughput of TARGET (a bundle or an .onnx file) per batch size."""
    from edgecv.runtime.acceptance.bench import BenchOptions
    from edgecv.runtime.acceptance.bench import bench as run_bench

    res = run_bench(target, backend, BenchOptions(**options_from(BenchOptions, flags, keep_none=True),
                                                  show_progress=not as_json))
    if as_json:
        click.echo(json.dumps(res))
        return
    from edgecv.utils.table import print_rows

    rows = [{"batch": b, **{k: v for k, v in s.items() if k in ("p50_ms", "p90_ms", "p99_ms", "throughput")}}
            for b, s in res["batches"].items()]
    print_rows(rows, ["batch", "p50_ms", "p90_ms", "p99_ms", "throughput"],
               f"{res['backend']} {res['artifact']} ({res['precision']})")


@click.command()
@click.argument("target")
@click.option("--backend", default="auto", show_default=True, type=BackendChoice())
@click.option("--iters", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--batch", type=click.IntRange(1, 4096), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None)
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Rows in the table and the chart.")
@click.option("-o", "--out", "out_dir", default=None, callback=new_dir_or_missing,
              help="Folder for profile.json (trtexec shape), profile.csv, profile.png.")
@click.option("--json", "as_json", is_flag=True)
@shape_option
@dla_option
def profile(target, backend, as_json, **flags):
    """Per-layer latency of TARGET, sorted by time, mapped back to PyTorch modules where names allow."""
    from edgecv.runtime.acceptance.profile import ProfileOptions, trtexec_json
    from edgecv.runtime.acceptance.profile import profile as run_profile

    opts = ProfileOptions(**options_from(ProfileOptions, flags))
    res = run_profile(target, backend, opts)
    if as_json:
        click.echo(json.dumps(trtexec_json(res)))
        return
    from edgecv.utils.table import print_rows

    print_rows([{**r, "ms": r["averageMs"], "%": r["percentage"]} for r in res["layers"][:opts.top]],
               ["name", "op", "torch_module", "ms", "%"], f"per-layer latency ({res['backend']}, {res['artifact']})")
    msg = (f"sum of layers {res['sum_layers_ms']:.3f} ms vs end-to-end {res['end_to_end_ms']:.3f} ms "
           f"(per run, the layers sum to {res['sum_ratio']:.1%} of it: the median over runs)")
    click.echo(msg if res["sum_within_tolerance"] else msg + " -- NOT within 10%: the gap is framework overhead "
               "outside the layers (input/output copies, scheduling)")


@click.command()
@click.argument("target")
@click.option("--source", "sources", multiple=True,
              help="/dev/videoN, N, csi://N, rtsp://..., a video file, an image folder, or a GStreamer pipeline. "
                   "Repeat for several cameras: their frames are batched into one engine call.")
@click.option("--cameras", default=None, help="A camera list (YAML: cameras: [{id, source, realtime, fps}]).")
@click.option("--backend", default="auto", show_default=True, type=BackendChoice())
@click.option("--json", "as_json", is_flag=True, help="One JSON line per frame.")
@click.option("--display", is_flag=True, help="Show annotated frames when a display exists.")
@click.option("--record", default=None, help="Write the annotated video (mp4).")
@click.option("--topk", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--smooth", type=click.IntRange(1, MAX_SMOOTH), default=1, show_default=True,
              help="Average probabilities over the last N frames.")
@click.option("--max-frames", type=click.IntRange(min=0), default=None)
@click.option("--loop", is_flag=True, help="Loop file and folder sources.")
@click.option("--realtime", is_flag=True,
              help="Replay files and folders like a live camera: at their frame rate (or --fps), newest frame only.")
@click.option("--fps", type=FiniteRange(*FPS_RANGE), default=None,
              help="--realtime pace for folders and files without a frame rate [default: the file's, else 30].")
@click.option("--max-age", "max_age_ms", type=FiniteRange(min=0), default=None,
              help="Never classify a frame older than MS milliseconds; it is counted as stale.")
@click.option("--min-score", type=FiniteRange(0, 1), default=None,
              help="Report frames whose top score is below S as 'unknown' instead of forcing a class.")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None)
@click.option("--max-failures", type=click.IntRange(min=0), default=None,
              help="Reconnect attempts before giving up [default: live sources retry forever, with backoff capped "
                   "at 10 s; files and folders fail at once when they cannot be read].")
@click.option("--open-timeout", "open_timeout_s", type=FiniteRange(0.1, MAX_TIMEOUT_S), default=10.0, show_default=True,
              help="Seconds to wait for a live source to open (per try).")
@click.option("--read-timeout", "read_timeout_s", type=FiniteRange(0.1, MAX_TIMEOUT_S), default=5.0, show_default=True,
              help="Seconds without a frame before a live source counts as lost.")
@click.option("--resize", type=click.Choice(["auto", "area", "fast"]), default="auto", show_default=True,
              help="How frames are shrunk to the model's resize size. area: INTER_AREA on the whole frame; fast: "
                   "fitted blur + warp of the crop window only, ~4x cheaper on VGA; auto: fast from a 1.45x shrink "
                   "up, area below, whichever is closer to training (99.2% top-1 agreement on the ImageNet samples).")
@click.option("--decode-threads", type=click.IntRange(1, MAX_THREADS), default=None,
              help="FFmpeg decoder threads for files and RTSP [default: 1 when the model runs on the CPU].")
@click.option("--camera-resize/--no-camera-resize", default=True, show_default=True,
              help="csi://: scale frames to the model's resize size in the Jetson's VIC, not on the CPU.")
@click.option("--gpu-preprocess", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Resize and normalise on the GPU (one CUDA kernel, the training transform exactly) straight into "
                   "the TensorRT engine's input; auto: where the engine runs on a GPU and cuda-python is installed.")
@click.option("--infer-workers", type=click.IntRange(1, MAX_THREADS), default=None,
              help="Several cameras on a CPU backend: engine instances, each running a batched round of frames, "
                   "side by side [default: one single-threaded worker per core (--threads caps the cores), at most "
                   "one per camera].")
@dla_option
def run(target, sources, cameras, **flags):
    """Classify frames from a camera, stream, video file or image folder with TARGET (a bundle).

    Exit status: 0 done, 2 bad input (bundle, source, flag), 3 the source failed, 130 Ctrl-C, 143 SIGTERM
    (the summary is printed and a --record file finalised in every case).
    """
    from edgecv.runtime.stream.loop import run as run_loop
    from edgecv.runtime.stream.options import RunOptions

    opts = RunOptions(**options_from(RunOptions, flags, keep_none=True))
    as_json = opts.as_json
    if cameras or len(sources) > 1:
        from edgecv.runtime.stream.cameras import camera_list
        from edgecv.runtime.stream.multi import run_multi

        summary = run_multi(target, camera_list(cameras, sources), opts)
        _print_multi(summary, as_json)
        return
    if not sources:
        raise click.UsageError("give --source (repeat it for several cameras) or --cameras FILE")
    source = sources[0]
    summary = run_loop(target, source, opts.backend, opts)
    out = {k: v for k, v in summary.items() if k != "latency_ms"}
    lat = summary["latency_ms"].get("pre_infer_post", {})
    line = (f"frames {out['frames']}  fps {out['fps']:.1f}  dropped {out['dropped']}  stale {out['stale']}  "
            f"skipped {out['skipped']}  reconnects {out['reconnects']}  "
            f"latency p50 {lat.get('p50_ms', 0):.3f} ms p90 {lat.get('p90_ms', 0):.3f} ms p99 {lat.get('p99_ms', 0):.3f} ms")
    click.echo(json.dumps({"summary": summary}) if as_json else line, err=as_json)
    if summary.get("recorded"):
        click.echo(f"recorded {summary['recorded']}", err=as_json)
    if summary.get("record_error"):
        click.echo(f"error: {summary['record_error']}", err=True)
    if summary["error"]:
        click.echo(f"error: {summary['error']}", err=True)
        sys.exit(3)
    if summary["interrupted"]:
        click.echo("terminated" if summary["interrupted"] == "SIGTERM" else "interrupted", err=True)
        sys.exit(143 if summary["interrupted"] == "SIGTERM" else 130)
    if summary.get("record_error"):
        sys.exit(2)


def _print_multi(summary, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"summary": summary}), err=True)
    else:
        from edgecv.utils.table import print_rows

        rows = [{"camera": c, **{k: v[k] for k in ("frames", "dropped", "stale", "skipped", "reconnects")},
                 "age_p50_ms": (v["age_ms"] or {}).get("p50_ms"), "age_p99_ms": (v["age_ms"] or {}).get("p99_ms"),
                 "error": v["error"] or ""} for c, v in summary["cameras"].items()]
        print_rows(rows, ["camera", "frames", "dropped", "stale", "skipped", "reconnects", "age_p50_ms", "age_p99_ms",
                          "error"],
                   f"{summary['frames']} frames, {summary['fps']:.1f} fps, mean batch {summary['mean_batch']:.2f}")
    if summary["error"]:
        click.echo(f"error: {summary['error']}", err=True)
        sys.exit(3)
    if summary["interrupted"]:
        sys.exit(143 if summary["interrupted"] == "SIGTERM" else 130)
