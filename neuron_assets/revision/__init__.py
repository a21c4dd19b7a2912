"""Stage 6: revision with generated sentences (method.md §8): test sentences, their real
activations, revised explanations and their scores."""
