"""``make bench-viewer``: the viewer and the README's queries on a study-sized result set.

Writes the synthetic set first where ``--data-dir`` holds none (``make study-results``: 48
layers x 6,400 neurons by default; ``--token-layers`` limits the per-token tables, about
0.6 GB a layer, to the first layers). Then, in one process, each page is rendered once by a
new viewer (nothing kept from an earlier request; the files may be in the OS's cache) and
``--rounds`` times by one viewer (which keeps the index's per-neuron aggregate while the
score files are unchanged), the median of those printed beside the first; each query
likewise, once and ``--rounds`` times:

- the index: page 1 of every layer, page 100 sorted by the explanation's score, a search of
  every explanation, a verdict filter, one layer's page;
- a neuron page of a layer with the per-token tables (its rows, excerpts and HTML);
- the first four of the README's example queries (``sql/examples.sql``), through the DuckDB
  views, every row fetched.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from neuron_assets.llm.llama_build import cpu_model
from neuron_assets.storage.store import ResultStore, sql_statements
from neuron_assets.synthetic.results import StudyShape, write_study_results
from neuron_assets.viewer.data import ViewerData
from neuron_assets.viewer.server import render

README_QUERIES = 4


def _times(first: Callable[[], object], again: Callable[[], object], rounds: int) -> tuple[float, float, object]:
    """Seconds of ``first`` once, the median seconds of ``again`` over ``rounds``, and ``first``'s result."""
    started = time.perf_counter()
    result = first()
    cold = time.perf_counter() - started
    warm = []
    for _ in range(rounds):
        started = time.perf_counter()
        again()
        warm.append(time.perf_counter() - started)
    return cold, statistics.median(warm), result


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*.parquet"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/study")
    parser.add_argument("--layers", type=int, default=StudyShape.layers)
    parser.add_argument("--neurons", type=int, default=StudyShape.neurons)
    parser.add_argument("--token-layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_model()}")
    shape = StudyShape(args.layers, args.neurons, args.token_layers)
    store = ResultStore(args.data_dir)
    if not store.has_results("scores"):
        started = time.perf_counter()
        write_study_results(store, shape, log=lambda line: None)
        print(f"wrote the synthetic set in {time.perf_counter() - started:.0f} s")
    store.refresh_views()
    model, variant = shape.model_folder, shape.variant
    data = ViewerData(store)
    stored = data.layers(next(e for e in data.experiments() if (e.model, e.variant) == (model, variant)))
    token_layers = sorted(store.partitions("activation_records", [model]), key=int)
    print(
        f"set: {store.location}, {len(stored)} layers with scores, per-token tables for {len(token_layers)} "
        f"layers ({token_layers[0]}-{token_layers[-1]}); {_size(store.root) / 1e9:.2f} GB of Parquet"
    )
    index = f"/{model}/{variant}/"
    pages = {
        "index, page 1": (index, ""),
        "index, page 100 by explanation score": (index, "sort=explanation&page=100"),
        "index, search 'mentions of'": (index, "q=mentions+of"),
        "index, verdict beats_both": (index, "verdict=beats_both"),
        "index, one layer": (f"{index}layer-{stored[-1]}/", ""),
        "neuron page": (f"{index}layer-{token_layers[0]}/neuron-{args.neurons // 2}", ""),
    }
    print(f"\n| measure | new viewer s | same viewer s (median of {args.rounds}) | result |\n|---|---:|---:|---|")
    for name, (path, query) in pages.items():
        cold, warm, html = _times(
            lambda path=path, query=query: render(ViewerData(store), path, query),  # a new viewer: nothing kept
            lambda path=path, query=query: render(data, path, query),
            args.rounds,
        )
        print(f"| {name} | {cold:.3f} | {warm:.3f} | {len(html) / 1e3:.0f} kB of HTML |")
    with store.connect() as connection:
        for statement in sql_statements("examples.sql")[:README_QUERIES]:
            first_line = " ".join(statement.split())[:60]
            run = lambda s=statement: connection.execute(s).fetchall()  # noqa: E731
            cold, warm, rows = _times(run, run, args.rounds)
            print(f"| `{first_line}…` | {cold:.3f} | {warm:.3f} | {len(rows):,} rows |")


if __name__ == "__main__":
    main()
