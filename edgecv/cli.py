"""The ``edgecv`` command line: a thin click group; each command calls a library function.

Heavy imports (torch, tensorrt) happen inside commands so that device-side commands start without them.
"""
from __future__ import annotations

import json
import logging
import os
import sys

import click

from edgecv.cli_types import BackendChoice, new_dir_or_missing


class EdgecvGroup(click.Group):
    """Turns the library's validation errors into one clear line and exit code 2, not a traceback."""

    def invoke(self, ctx):
        from edgecv.errors import USER_ERRORS

        try:
            return super().invoke(ctx)
        except USER_ERRORS() as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as e:
            if e.name != "cv2":
                raise
            click.echo("error: OpenCV (cv2) is not installed: on a Jetson install JetPack's GStreamer-enabled "
                       "build (sudo apt install python3-opencv); elsewhere pip install 'edgecv[opencv]'", err=True)
            sys.exit(2)


@click.group(cls=EdgecvGroup)
@click.version_option(package_name="edgecv")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--trust", multiple=True, metavar="KEY", help="Trust this public key (PEM): every bundle opened must "
              "carry a valid signature by a trusted key (also EDGECV_TRUST, ~/.config/edgecv/trusted-keys/).")
def cli(verbose: bool, trust) -> None:
    """edgecv: train, compress, export and deploy CNN image classifiers to edge devices."""
    # Libraries log on the root logger at INFO (ONNX Runtime's quantizer wrote 4,065 "Increased scale" lines in
    # one Lite0 export): their INFO shows with --verbose only; edgecv's own progress always does.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="[%(name)s] %(message)s")
    logging.getLogger("edgecv").setLevel(logging.DEBUG if verbose else logging.INFO)
    from edgecv.bundle.trust import set_command_trust

    set_command_trust(trust)


def _emit(result: dict, as_json: bool, table_title: str) -> None:
    if as_json:
        click.echo(json.dumps(result))
    else:
        from edgecv.utils.table import print_kv

        print_kv(result, table_title)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", default=None, help="Output folder (default: runs/<recipe name>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field, e.g. train.epochs=3.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT/last.pt.")
def train(recipe, out_dir, overrides, resume):
    """Train or fine-tune the model a RECIPE describes (works under torchrun for DDP)."""
    from edgecv.recipe import load_recipe
    from edgecv.train.loop import train as run_train

    r = load_recipe(recipe, list(overrides))
    out = out_dir or f"runs/{r.name}"
    m = run_train(r, out, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"{out}/model.pt  top1 {m['top1']:.4f}  top5 {m['top5']:.4f}  (n={m['n']})")


@cli.command("eval")
@click.argument("target")
@click.option("--data", required=True, help="Images to evaluate: a Fashion-MNIST folder, a wnid folder, an ImageFolder tree.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate the first N images only.")
@click.option("--backend", default="auto", type=BackendChoice(), show_default=True,
              help="For bundles: auto (the fastest target that runs here) or a target.")
@click.option("--dla", "dla_core", type=click.IntRange(min=-1), default=-1,
              help="For bundles: run the TensorRT engine built for DLA core N; -1: the GPU.")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default=None,
              help="For bundles: this artefact instead of the default (or what verify chose).")
@click.option("--against-fp32", is_flag=True,
              help="For bundles: also run the fp32 artefact and report agreement, mean KL and worst class drop.")
@click.option("--allow-missing-classes", is_flag=True,
              help="Accept DATA that has only some of the model's classes (matched by name).")
@click.option("--corruptions", default=None, metavar="LIST",
              help="For bundles: robustness report instead: fp32 and every int8 artefact that runs here under "
                   "ImageNet-C corruptions (all, noise, blur, weather, digital, or names); --limit defaults to 100.")
@click.option("--severities", default="1-5", show_default=True, help="With --corruptions: severities (1-5, 3, 1,3,5).")
@click.option("-o", "--out", "out_dir", default=None, callback=new_dir_or_missing,
              help="With --corruptions: write corruptions.{md,json,png} here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_cmd(target, data, overrides, limit, backend, dla_core, precision, against_fp32, allow_missing_classes,
             corruptions, severities, out_dir, as_json):
    """Top-1/top-5 of TARGET (a recipe, a checkpoint, or a deploy bundle) on DATA.

    DATA's class names must match the model's labels (order may differ); a mismatch is an error that
    names the missing and extra classes.
    """
    from pathlib import Path

    if corruptions is not None:
        _eval_corruptions(target, data, corruptions, severities, backend, limit, allow_missing_classes, out_dir,
                          as_json)
        return
    if Path(target).is_dir():
        from edgecv.runtime.evaluate import eval_bundle

        res = eval_bundle(target, data, backend=backend, limit=limit, show_progress=not as_json,
                          allow_subset=allow_missing_classes, dla_core=dla_core, against_fp32=against_fp32,
                          precision=precision)
    else:
        from edgecv.train.evaluate import eval_source

        res = eval_source(target, data, list(overrides), limit=limit, show_progress=not as_json,
                          allow_subset=allow_missing_classes)
    _emit(res, as_json, f"eval {target}")


def _eval_corruptions(target, data, corruptions, severities, backend, limit, allow_subset, out_dir, as_json):
    from pathlib import Path

    from edgecv.data import corruptions as corr
    from edgecv.runtime.robustness import eval_corruptions, table_rows

    if not Path(target).is_dir():
        raise click.UsageError("--corruptions: TARGET must be a deploy bundle")
    try:
        names, sevs = corr.parse_names(corruptions), corr.severities(severities)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--corruptions/--severities") from None
    rep = eval_corruptions(target, data, names, sevs, backend=backend, limit=limit or 100, allow_subset=allow_subset,
                           out_dir=out_dir, show_progress=not as_json)
    if as_json:
        click.echo(json.dumps(rep))
        return
    from edgecv.utils.table import print_rows

    rows = table_rows(rep)
    print_rows(rows, list(rows[0]), f"robustness of {target} ({rep['images']} images, severities {severities})")
    for k, s in rep["summary"].items():
        if k != rep["reference"]:
            click.echo(f"{k}: worst {s['worst']} ({s['worst_extra_drop']:+.2f} points beyond its clean drop)")


@cli.command()
@click.argument("target")
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--out", "out_dir", default="explain", show_default=True)
@click.option("--method", default="gradcam", show_default=True,
              type=click.Choice(["gradcam", "gradcam++", "xgradcam", "eigencam", "layercam", "hirescam"]))
@click.option("--topk", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--check", is_flag=True, help="Deletion check: removing the top-20% CAM pixels must hurt more than random 20%.")
@click.option("--random-unit", type=click.Choice(["cam", "pixel"]), default="cam", show_default=True,
              help="What the check deletes at random: blobs on the CAM's grid, or single pixels.")
@click.option("--json", "as_json", is_flag=True)
def explain(target, images, out_dir, method, topk, check, random_unit, as_json):
    """Grad-CAM heatmaps for IMAGES (files or folders) under TARGET's model, saved as PNG.

    --check deletes (blurs away) the 20% of pixels the CAM ranks highest and compares the class score
    with the mean of 10 random deletions of the same size; it holds when the CAM's deletion hurts more.
    """
    from edgecv.train.explain import explain_images

    res = explain_images(target, list(images), out_dir, method=method, topk=topk, check=check,
                         random_unit=random_unit)
    if as_json:
        click.echo(json.dumps(res))
    else:
        from edgecv.utils.table import print_rows

        cols = ["image", "label", "score"] + (["drop_top", "drop_random", "deletion_ok"] if check else []) + ["png"]
        print_rows(res["images"], cols, f"explain ({method})")
        if check:
            click.echo(f"deletion check holds on {res['deletion_pass_rate']:.1%} of {len(res['images'])} images")
        for r in res["skipped"]:
            click.echo(f"skipped {r['image']}: {r['error']}", err=True)


def _register() -> None:
    """Add the command modules' commands to the group, explicitly: ``from edgecv.cli import cli`` is complete
    (the command modules import nothing from here, so there is no import cycle)."""
    from edgecv import cli_deploy, cli_device, cli_export

    for cmd in (cli_export.export, cli_export.check, cli_device.build, cli_device.verify, cli_device.bench,
                cli_device.profile, cli_device.run, cli_deploy.sign, cli_deploy.install, cli_deploy.rollback,
                cli_deploy.status, cli_deploy.push, cli_deploy.service_unit):
        cli.add_command(cmd)


_register()


def main() -> None:
    """Entry point: one line and an exit code for every way a command can end, never a traceback.

    2: a user error (names the file, key or flag); 130: Ctrl-C; 143: SIGTERM (cleanup has run by then);
    1: an internal error (``EDGECV_DEBUG=1`` or ``-v`` shows the traceback).
    """
    from edgecv.utils import signals

    signals.install()
    try:
        rv = cli.main(standalone_mode=False)
    except click.exceptions.Abort as e:  # click's wrapper for Ctrl-C and EOF
        code = signals.exit_code(e.__context__) if isinstance(e.__context__, signals.INTERRUPTS) else 130
        click.echo("interrupted" if code == 130 else "terminated", err=True)
        sys.exit(code)
    except signals.INTERRUPTS as e:
        click.echo("interrupted" if isinstance(e, KeyboardInterrupt) else "terminated", err=True)
        sys.exit(signals.exit_code(e))
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(141)
    except Exception as e:
        if os.environ.get("EDGECV_DEBUG") or "-v" in sys.argv[1:2] or "--verbose" in sys.argv[1:2]:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        click.echo(f"error: internal error: {type(e).__name__}: {first} (EDGECV_DEBUG=1 shows the traceback)",
                   err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
