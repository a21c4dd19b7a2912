"""The neuron viewer: pages and plots of stored results, served locally (``make view``)."""

DEFAULT_PORT = 8765
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"  # where make view serves; asset metadata links here
