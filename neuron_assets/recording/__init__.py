"""Stage 2: the subject model and the streaming activation recorder (method.md §2)."""
