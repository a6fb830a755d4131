"""The ``edgecv`` command line: a thin click group; each command calls a library function, its flags mapped to one
typed options object (RunOptions, ExportConfig, EvalOptions) in one place (edgecv.cli.types.options_from).

Heavy imports (torch, tensorrt) happen inside commands so that device-side commands start without them.
"""
from __future__ import annotations

import errno
import logging
import os
import sys

import click

from edgecv.utils.io import FULL_OR_READ_ONLY

# a path the file system cannot hold or follow: the user's to change
_BAD_PATH = {errno.ENAMETOOLONG, errno.ELOOP}


def _os_error_line(e: OSError):
    """The one line for an OSError that is the machine's state or the path's, else None (a bug: raised)."""
    name = str(e.filename) if e.filename else ""
    where = f"{name[:80]}...{name[-40:]}: " if len(name) > 160 else f"{name}: " if name else ""
    if e.errno in FULL_OR_READ_ONLY:  # the machine's state, not a bug
        return (f"{where}{e.strerror}: edgecv keeps no half-written file; free space (or lift the limit) and run "
                "again, or write elsewhere")
    if e.errno in _BAD_PATH:
        return f"{where}{e.strerror} (the file system cannot hold or follow this path)"
    return None


class EdgecvGroup(click.Group):
    """Turns the library's validation errors into one clear line and exit code 2, not a traceback."""

    def invoke(self, ctx):
        from edgecv.errors import USER_ERRORS

        try:
            return super().invoke(ctx)
        except USER_ERRORS() as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except OSError as e:
            line = _os_error_line(e)
            if line is None:
                raise
            click.echo(f"error: {line}", err=True)
            sys.exit(2)
        except RuntimeError as e:
            if type(e).__name__ != "OutOfMemoryError":  # torch's (CUDA's); torch itself is not imported here
                raise
            what = ". ".join(str(e).split(". ")[:2]).rstrip(".")
            click.echo(f"error: {what}: lower the batch size (--set data.batch_size=N), or keep the run on the CPU "
                       "(CUDA_VISIBLE_DEVICES=)", err=True)
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


def _register() -> None:
    """Add the command modules' commands to the group, explicitly: ``from edgecv.cli import cli`` is complete
    (the command modules import nothing from here, so there is no import cycle)."""
    from edgecv.cli import deploy, device, export, workstation

    for cmd in (workstation.train, workstation.eval_cmd, workstation.explain, export.export, export.check,
                device.build, device.verify, device.bench, device.profile, device.run, deploy.sign, deploy.install,
                deploy.rollback, deploy.status, deploy.push, deploy.service_unit, deploy.publish, deploy.repo,
                deploy.update):
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
