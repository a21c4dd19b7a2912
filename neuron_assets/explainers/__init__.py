"""Stage 3: explanations written by the explainer LLM (method.md §3)."""
