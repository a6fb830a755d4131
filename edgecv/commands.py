"""Registers the export and device commands on the CLI group (one module each)."""
from edgecv import cli_device, cli_export  # noqa: F401
