"""Explainable directions (method.md §9): the layer's covariance and its whitening, virtual
neurons for many directions at once, and the coordinate ascent on a direction."""
