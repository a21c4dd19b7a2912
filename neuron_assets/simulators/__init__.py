"""Stage 4: activations simulated from an explanation by the simulator LLM (method.md §4)."""
