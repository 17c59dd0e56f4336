"""legacy_compat."""
