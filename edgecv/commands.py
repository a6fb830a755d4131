"""Registers the export and device commands on the CLI group (one module each, imported lazily)."""
from edgecv.cli_export import export, check  # noqa: F401
