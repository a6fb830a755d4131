"""``edgecv train``, ``eval``, ``explain``: the workstation's commands besides ``export`` (``eval BUNDLE`` runs on
the device too: it imports no torch)."""
from __future__ import annotations

import json
import os

import click

from edgecv.bundle.manifest import PRECISIONS
from edgecv.cli.types import BackendChoice, eval_target, model_file, new_dir_or_missing, options_from


def _emit(result: dict, as_json: bool, table_title: str) -> None:
    if as_json:
        click.echo(json.dumps(result))
    else:
        from edgecv.utils.table import print_kv

        print_kv(result, table_title)


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", default=None, help="Output folder (default: runs/<recipe name>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field, e.g. train.epochs=3.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT/last.pt.")
@click.option("--force", is_flag=True, help="Replace an earlier run in OUT, finished or interrupted (refused "
                                            "otherwise).")
def train(recipe, out_dir, overrides, resume, force):
    """Train or fine-tune the model a RECIPE describes (works under torchrun for DDP)."""
    from edgecv.recipe import load_recipe

    if resume and force:
        raise click.UsageError("--resume continues the run in OUT and --force replaces it: give one")
    r = load_recipe(recipe, list(overrides))  # torch-free, as the output's check: refused before seconds of imports
    out = out_dir or f"runs/{r.name}"
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 alone owns the output and the summary
    if rank0:
        from edgecv.train.run_dir import check_run_output

        check_run_output(out, r, resume=resume, force=force)
    from edgecv.train.loop import train as run_train

    m = run_train(r, out, resume=resume, force=force)
    if rank0:
        click.echo(f"{out}/model.pt  top1 {m['top1']:.4f}  top5 {m['top5']:.4f}  (n={m['n']})")


@click.command("eval")
@click.argument("target", callback=eval_target)
@click.option("--data", help="Images to evaluate: a Fashion-MNIST folder, a wnid folder, an ImageFolder tree "
                             "(a recipe without it: its own held-out split).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate N images, spread evenly over DATA (a folder lists its images class by class).")
@click.option("--backend", default="auto", type=BackendChoice(), show_default=True,
              help="For bundles: auto (the fastest target that runs here) or a target.")
@click.option("--dla", "dla_core", type=click.IntRange(min=-1), default=-1,
              help="For bundles: run the TensorRT engine built for DLA core N; -1: the GPU.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="For bundles: this artefact instead of the default (or what verify chose).")
@click.option("--against-fp32", is_flag=True,
              help="For bundles: also run the fp32 artefact and report agreement, mean KL and worst class drop.")
@click.option("--allow-missing-classes", "allow_subset", is_flag=True,
              help="Accept DATA that has only some of the model's classes (matched by name).")
@click.option("--include-seen", is_flag=True,
              help="For bundles: also judge the images of DATA the bundle was trained, calibrated or tuned on "
                   "(its seen_images.txt); they are left out otherwise, and counted.")
@click.option("--corruptions", default=None, metavar="LIST",
              help="For bundles: robustness report instead: fp32 and every int8 artefact that runs here under "
                   "ImageNet-C corruptions (all, noise, blur, weather, digital, or names); --limit defaults to 100.")
@click.option("--severities", default="1-5", show_default=True, help="With --corruptions: severities (1-5, 3, 1,3,5).")
@click.option("-o", "--out", "out_dir", default=None, callback=new_dir_or_missing,
              help="With --corruptions: write corruptions.{md,json,png} here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_cmd(target, data, overrides, corruptions, severities, out_dir, as_json, **flags):
    """Top-1/top-5 of TARGET (a recipe, a checkpoint, or a deploy bundle) on DATA.

    A recipe without --data is judged on its own held-out split, the one its training reports.
    DATA's class names must match the model's labels (order may differ); a mismatch is an error that
    names the missing and extra classes.
    """
    from pathlib import Path

    from edgecv.evaluate.bundle import EvalOptions

    o = EvalOptions(**options_from(EvalOptions, flags), show_progress=not as_json)
    if data is None and (Path(target).is_dir() or corruptions is not None):
        raise click.UsageError("--data is required for a bundle (only a recipe knows its own images)")
    if corruptions is not None:
        _eval_corruptions(target, data, corruptions, severities, o, out_dir, as_json)
        return
    if Path(target).is_dir():
        from edgecv.evaluate.bundle import eval_bundle

        res = eval_bundle(target, data, o)
    else:
        from edgecv.evaluate.source import eval_source

        res = eval_source(target, data, list(overrides), limit=o.limit, show_progress=o.show_progress,
                          allow_subset=o.allow_subset)
    _emit(res, as_json, f"eval {target}")


def _eval_corruptions(target, data, corruptions, severities, o, out_dir, as_json):
    import dataclasses
    from pathlib import Path

    from edgecv.data import corruptions as corr
    from edgecv.evaluate.robustness import eval_corruptions, table_rows

    if not Path(target).is_dir():
        raise click.UsageError("--corruptions: TARGET must be a deploy bundle")
    try:
        names, sevs = corr.parse_names(corruptions), corr.severities(severities)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--corruptions/--severities") from None
    rep = eval_corruptions(target, data, names, sevs, dataclasses.replace(o, limit=o.limit or 100), out_dir=out_dir)
    if as_json:
        click.echo(json.dumps(rep))
        return
    from edgecv.utils.table import print_rows

    rows = table_rows(rep)
    print_rows(rows, list(rows[0]), f"robustness of {target} ({rep['images']} images, severities {severities})")
    for k, s in rep["summary"].items():
        if k != rep["reference"]:
            click.echo(f"{k}: worst {s['worst']} ({s['worst_extra_drop']:+.2f} points beyond its clean drop)")


@click.command()
@click.argument("target", callback=model_file)
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--out", "out_dir", default="explain", show_default=True, callback=new_dir_or_missing)
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
    from edgecv.train.explain import deletion_summary, explain_images

    res = explain_images(target, list(images), out_dir, method=method, topk=topk, check=check,
                         random_unit=random_unit)
    if as_json:
        click.echo(json.dumps(res))
    else:
        from edgecv.utils.table import print_rows

        cols = ["image", "label", "score"] + (["drop_top", "drop_random", "deletion_ok"] if check else []) + ["png"]
        print_rows(res["images"], cols, f"explain ({method})")
        if check:
            click.echo(deletion_summary(res))
        for r in res["skipped"]:
            click.echo(f"skipped {r['image']}: {r['error']}", err=True)


