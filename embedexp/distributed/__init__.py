"""Cross-rank gather and GradCache (not yet implemented; single-process training only)."""
