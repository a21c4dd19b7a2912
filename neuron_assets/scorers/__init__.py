"""Stage 5: correlation scores, held-out calibration and the names of the scored methods (method.md §5)."""
