"""What ``edgecv train`` checks about its output folder, torch-free, so that the command line can refuse before
seconds of imports: a run already there (finished or interrupted), another process writing there now."""
from __future__ import annotations

import json
import os
from pathlib import Path

from edgecv.errors import OutputError
from edgecv.recipe import Recipe
from edgecv.utils.outputs import RUN, OutputLock, check_output


def check_run_output(out_dir: str | os.PathLike, recipe: Recipe, resume: bool = False, force: bool = False) -> None:
    """Refuse now what training would refuse after its imports; writes nothing (the lock is held only for the
    look). Training checks all of it again under its own lock: this is the early answer, not the guard."""
    out = check_output(out_dir, RUN)
    with OutputLock(out):  # a run writing there now is named as such
        if not resume and not force:
            refuse_to_replace_a_run(out, recipe)


def refuse_to_replace_a_run(out: Path, recipe: Recipe) -> None:
    """A new run writes into its folder file by file: over a finished run, it replaced a model that may have taken
    hours (a killed one leaves the old model.pt beside its own recipe.yaml and last.pt); over an interrupted run, it
    threw the epochs away that --resume would have kept. Either is refused, naming what is there and what to do."""
    again = f"edgecv train {recipe.source or 'RECIPE'} -o {out}"
    if (out / "model.pt").is_file():
        top1 = _recorded_top1(out / "metrics.json")
        what, keep = f"a finished training run (model.pt{top1})", "choose another -o to keep it"
    elif (out / "last.pt").is_file():
        what, keep = "an interrupted training run (last.pt)", f"`{again} --resume` continues it"
    else:
        return
    raise OutputError(f"{out}: holds {what}; {keep}, or pass --force (`{again} --force`) to replace it")


def _recorded_top1(path: Path) -> str:
    from edgecv.utils.io import NotASmallFile, read_small

    try:
        return f", top-1 {float(json.loads(read_small(path))['top1']):.4f}"
    except (OSError, NotASmallFile, ValueError, KeyError, TypeError):
        return ""  # the note is a courtesy: a missing or damaged metrics.json leaves it out
