"""``make view``: serve the neuron viewer for a data directory on a local port.

Pages are rendered from the stored Parquet files at each request, so a page shows what a
running backfill has written so far. Routes:

- ``/``: every subject model and variant with scores;
- ``/<model>/<variant>/``: the neuron index with the layer plots (``.../layer-<L>/``: one layer's),
  one page of neurons at a time (``?q=&verdict=&method=&polarity=&sort=&order=&page=``);
- ``/<model>/<variant>/layer-<L>/neuron-<N>[-negative]``: one neuron (side).
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from neuron_assets.storage.store import ResultStore
from neuron_assets.viewer import DEFAULT_PORT, pages
from neuron_assets.viewer.data import ExperimentFolder, ViewerData, ViewerError
from neuron_assets.viewer.index_query import IndexQuery, IndexQueryError

_NAME = r"[a-z][a-z0-9_]*"
_INDEX = re.compile(rf"/({_NAME})/({_NAME})(?:/layer-(\d+))?/?")
_NEURON = re.compile(rf"/({_NAME})/({_NAME})/layer-(\d+)/neuron-(\d+)(-negative)?")


def render(data: ViewerData, path: str, query: str = "") -> str:
    """The page for ``path`` and its URL ``query`` string (the index's search, filters, order and
    page); a ``ViewerError`` for anything that is not a stored result or a parameter it cannot take."""
    if path in ("", "/"):
        return pages.home(data.experiments())
    if match := _INDEX.fullmatch(path):
        model, variant, layer = match.groups()
        experiment, layers = ExperimentFolder(model, variant), None if layer is None else [int(layer)]
        data.check_experiment(experiment)
        try:
            asked = IndexQuery.from_parameters(parse_qs(query))
        except IndexQueryError as error:
            raise ViewerError(str(error)) from None
        found = data.index(experiment, layers, asked)
        comparisons = data.comparisons(experiment, layers)
        return pages.index(experiment, found, comparisons, data.layers(experiment), layers, asked)
    if match := _NEURON.fullmatch(path):
        model, variant, layer, neuron, negative = match.groups()
        experiment, polarity = ExperimentFolder(model, variant), "negative" if negative else "positive"
        parts = data.neuron(experiment, int(layer), int(neuron), polarity)
        return pages.neuron_page(experiment, int(layer), int(neuron), polarity, parts)
    raise ViewerError(
        f"{path!r} is not a viewer page: pages are /<model>/<variant>/ and /<model>/<variant>/layer-L/neuron-N, "
        f"where model and variant are lowercase names"
    )


def handler_for(data: ViewerData) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            address = urlsplit(self.path)
            try:
                status, html = HTTPStatus.OK, render(data, unquote(address.path), address.query)
            except ViewerError as error:
                status, html = HTTPStatus.NOT_FOUND, pages.error_page(str(error))
            except Exception as error:  # a bad file, a schema error: say what, keep the trace for the terminal
                traceback.print_exc()
                status, html = (
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    pages.error_page(f"this page could not be built: {type(error).__name__}: {error}"),
                )
            body = html.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the http.server signature)
            sys.stderr.write(f"viewer: {format % args}\n")

    return Handler


def serve(
    data_dir: Path | str, port: int = DEFAULT_PORT, host: str = "127.0.0.1", local_dir: Path | None = None
) -> ThreadingHTTPServer:
    """A server for ``data_dir`` (a folder or ``s3://bucket/prefix``) bound to ``host:port`` (port 0:
    any free one); call ``serve_forever``."""
    store = ResultStore(data_dir, local_dir)
    store.migrate_old_layout()
    return ThreadingHTTPServer((host, port), handler_for(ViewerData(store)))


def main(argv: list[str] | None = None) -> int:
    from neuron_assets.settings import Settings
    from neuron_assets.storage.object_store import ObjectStoreError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-dir", default=None, help="results folder or s3:// URL (default: NEURON_ASSETS_DATA_DIR or data)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    settings = Settings.from_environment()
    data_dir = args.data_dir or settings.data_dir
    try:
        server = serve(data_dir, args.port, local_dir=settings.local_dir)
    except ObjectStoreError as error:
        raise SystemExit(str(error)) from None
    print(f"neuron viewer for {data_dir} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
