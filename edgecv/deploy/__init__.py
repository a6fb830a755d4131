"""Deploy to vehicles: signed bundles, A/B-slot installs with anti-rollback and revert, push over SSH."""
