"""Neuron puzzles (method.md §10): synthetic neurons with known explanations, to test the scorer and the explainer."""
