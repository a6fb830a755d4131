"""Small helpers shared by the workstation and device halves (no torch imports here)."""
