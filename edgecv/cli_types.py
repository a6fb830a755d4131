"""Parameter types shared by the command modules (no command lives here, so every module can import it)."""
from __future__ import annotations

import click


class BackendChoice(click.ParamType):
    """``auto`` or a registered target (edgecv.targets), checked when the command line is parsed, so a target
    registered after this module was imported is accepted too."""

    name = "backend"

    def get_metavar(self, param, ctx=None):
        from edgecv.runtime.select import backend_choices

        return "[" + "|".join(backend_choices()) + "]"

    def convert(self, value, param, ctx):
        from edgecv.runtime.select import backend_choices

        if value not in backend_choices():
            self.fail(f"{value!r} is not one of {', '.join(backend_choices())}", param, ctx)
        return value


def new_dir_or_missing(ctx, param, value):
    """An output folder option: a folder, or nothing yet (a file there is refused before any work)."""
    import os

    if value is not None and os.path.exists(value) and not os.path.isdir(value):
        raise click.BadParameter(f"{value}: exists and is not a directory", ctx, param)
    return value
