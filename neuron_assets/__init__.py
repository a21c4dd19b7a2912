"""neuron-assets: explain a language model's neurons with another language model, and score the explanations."""
