"""Stage 1: documents into 64-token excerpts and the explanation/scoring split (method.md §1)."""
