"""Synthetic result sets: values drawn from a seeded generator, shaped like the pipeline's tables."""
