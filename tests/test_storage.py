import subprocess
import sys
import textwrap

import duckdb
import pandera.errors
import polars as pl
import pytest

from neuron_assets.storage import ResultStore


def scores(layer: int, n: int, run: str = "run-1") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "layer": [layer] * n,
            "neuron": list(range(n)),
            "sample": [0] * n,
            "scoring_set": ["top_and_random"] * n,
            "correlation": [0.5] * n,
            "explained_variance": [0.25] * n,
            "calibration_slope": [1.0] * n,
            "calibration_intercept": [0.0] * n,
            "n_tokens": [10] * n,
            "n_unsimulated": [0] * n,
            "undefined_reason": pl.Series([None] * n, dtype=pl.String),
            "run_id": [run] * n,
            "partition": [str(layer)] * n,
        }
    )


def count(store: ResultStore, sql: str) -> int:
    with duckdb.connect(str(store.database), read_only=True) as connection:
        return connection.execute(sql).fetchone()[0]


def test_rewriting_a_partition_replaces_its_rows(tmp_path):
    store = ResultStore(tmp_path)
    store.write("scores", scores(0, 3), "0")
    store.write("scores", scores(1, 2), "1")
    store.write("scores", scores(0, 3, run="run-2"), "0")
    store.refresh_views()
    assert count(store, "SELECT count(*) FROM scores") == 5
    assert count(store, "SELECT count(*) FROM scores WHERE run_id = 'run-2'") == 3


def test_an_invalid_frame_is_rejected_and_the_stored_partition_kept(tmp_path):
    store = ResultStore(tmp_path)
    store.write("scores", scores(0, 3), "0")
    bad = scores(0, 1).with_columns(correlation=pl.lit(1.5))
    with pytest.raises(pandera.errors.SchemaError, match="correlation"):
        store.write("scores", bad, "0")
    assert len(store.read("scores", ["0"])) == 3
    assert [p.name for p in (tmp_path / "scores").iterdir()] == ["0.parquet"]


def test_reading_a_missing_partition_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="table 'scores' has not been materialized"):
        ResultStore(tmp_path).read("scores", ["4"])


def test_a_partition_from_an_older_version_is_named_with_the_columns_it_lacks(tmp_path):
    store = ResultStore(tmp_path)
    store.write("scores", scores(3, 2), "3")
    pl.read_parquet(store.path("scores", "3")).drop("undefined_reason").write_parquet(store.path("scores", "3"))
    with pytest.raises(ValueError, match=r"3.parquet was written by an older version .*no column undefined_reason"):
        store.read("scores", ["3"])


def test_views_offer_every_column_even_when_only_older_partitions_are_stored(tmp_path):
    store = ResultStore(tmp_path)
    store.write("scores", scores(3, 2), "3")
    pl.read_parquet(store.path("scores", "3")).drop("undefined_reason").write_parquet(store.path("scores", "3"))
    store.refresh_views()
    with duckdb.connect(str(store.database), read_only=True) as connection:
        assert connection.execute("SELECT count(*), count(undefined_reason) FROM scores").fetchone() == (2, 0)


def test_views_only_cover_tables_that_have_data(tmp_path):
    store = ResultStore(tmp_path)
    store.write("scores", scores(0, 1), "0")
    created = store.refresh_views()
    assert created == ["scores"]  # derived views wait for explanations and simulations


def test_an_open_reader_does_not_block_writes_and_sees_new_partitions(tmp_path):
    store = ResultStore(tmp_path)
    store.write("scores", scores(0, 2), "0")
    store.refresh_views()
    reader = subprocess.Popen(
        [
            sys.executable, "-c",
            textwrap.dedent(
                f"""
                import duckdb, sys
                c = duckdb.connect({str(store.database)!r}, read_only=True)
                print(c.execute("SELECT count(*) FROM scores").fetchone()[0], flush=True)
                sys.stdin.readline()
                print(c.execute("SELECT count(*) FROM scores").fetchone()[0], flush=True)
                """
            ),
        ],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert reader.stdout.readline().strip() == "2"
        store.write("scores", scores(1, 3), "1")  # a backfill writing while the session is open
        with pytest.raises(duckdb.IOException):
            store.refresh_views()  # the database file is the reader's; data files are not
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "5"
    finally:
        reader.kill()
        reader.wait()
