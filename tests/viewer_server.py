"""The viewer served from a thread on a free port, for the tests that drive it over HTTP."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from neuron_assets.viewer.server import serve


@contextmanager
def serving(data_dir: Path) -> Iterator[str]:
    """The viewer of ``data_dir`` on a free loopback port; yields its address, stops it at the end."""
    server = serve(data_dir, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
