"""Registers the export and device commands on the CLI group (one module each, imported lazily)."""
