"""Parameter types shared by the command modules (no command lives here, so every module can import it)."""
from __future__ import annotations

import click


class BackendChoice(click.ParamType):
    """``auto`` or a registered target (edgecv.targets), checked when the command line is parsed, so a target
    registered after this module was imported is accepted too."""

    name = "backend"

    def get_metavar(self, param, ctx=None):
        from edgecv.runtime.backends.select import backend_choices

        return "[" + "|".join(backend_choices()) + "]"

    def convert(self, value, param, ctx):
        from edgecv.runtime.backends.select import backend_choices

        if value not in backend_choices():
            self.fail(f"{value!r} is not one of {', '.join(backend_choices())}", param, ctx)
        return value


class FiniteRange(click.FloatRange):
    """click's FloatRange that also refuses nan and inf: nan passes every comparison a range makes (``--min-score
    nan`` reported no frame as unknown), and an infinite timeout overflows the clocks it is given to."""

    def convert(self, value, param, ctx):
        import math

        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def new_dir_or_missing(ctx, param, value):
    """An output folder option: a folder, or nothing yet (a file there is refused before any work)."""
    from edgecv.utils.outputs import not_a_folder

    problem = not_a_folder(value) if value is not None else None
    if problem:
        raise click.BadParameter(problem, ctx, param)
    return value


def model_file(ctx, param, value):
    """A recipe or checkpoint argument, checked before torch is imported (10 s): a missing path or a folder (a
    deploy bundle holds ONNX models, not the PyTorch model that gradients run through) is refused at once."""
    import os

    from edgecv.recipe import SOURCE_KINDS

    _refuse_missing(value, "no such file", SOURCE_KINDS, ctx, param)
    if os.path.isdir(value):
        inside = os.path.join(value, "pruned_model.pt")
        hint = f"; its PyTorch model is {inside}" if os.path.isfile(inside) else \
            "; give the recipe or the training run's model.pt it was exported from"
        raise click.BadParameter(f"{value}: a folder, not a recipe or checkpoint file{hint}", ctx, param)
    return value


def eval_target(ctx, param, value):
    """``edgecv eval``'s TARGET, checked before torch is imported: a recipe, a checkpoint or a deploy bundle
    folder must exist (the loaders' own message names only the first two)."""
    from edgecv.recipe import SOURCE_KINDS

    _refuse_missing(value, "no such file or folder", f"{SOURCE_KINDS}, or a deploy bundle folder", ctx, param)
    return value


def _refuse_missing(value: str, problem: str, expected: str, ctx, param) -> None:
    """A path argument that names nothing (a dangling symlink still names something: its loader says more)."""
    import os

    from edgecv.utils.io import relative_hint

    if not os.path.lexists(value):
        raise click.BadParameter(f"{value}: {problem} (expected {expected}){relative_hint(value)}", ctx, param)


class CommaList(click.ParamType):
    """A comma list of names, e.g. ``tensorrt,onnxruntime`` (blank items dropped)."""

    name = "A[,B...]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        return [v.strip() for v in str(value).split(",") if v.strip()]


def options_from(cls, kwargs: dict, keep_none: bool = False):
    """The click command's options that are fields of the dataclass ``cls``, by name: the one place a command's
    flags become its typed options object. ``keep_none=False`` leaves out flags not given (None), so the
    object's (or a recipe's) defaults apply; the result is a dict of them for ``cls(**...)`` or a merge."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    stray = sorted(set(kwargs) - names)
    if stray:  # a flag no option receives would be silently ignored
        raise TypeError(f"{', '.join(stray)}: not fields of {cls.__name__}")
    return {k: v for k, v in kwargs.items() if keep_none or v is not None}
