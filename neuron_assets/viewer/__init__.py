"""The neuron viewer: pages and plots of stored results, served locally (``make view``)."""
