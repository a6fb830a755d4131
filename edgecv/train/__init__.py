"""Training, evaluation and explanation on the workstation (needs the [train] extra)."""
