import subprocess
import sys
import textwrap

import duckdb
import pandera.errors
import polars as pl
import pytest

from neuron_assets.storage.store import ResultStore


def scores(layer: int, n: int, run: str = "run-1") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "layer": [layer] * n,
            "neuron": list(range(n)),
            "sample": [0] * n,
            "method": ["explanation"] * n,
            "explanation_neuron": list(range(n)),
            "scoring_set": ["top_and_random"] * n,
            "correlation": [0.5] * n,
            "explained_variance": [0.25] * n,
            "calibration_slope": [1.0] * n,
            "calibration_intercept": [0.0] * n,
            "n_tokens": [10] * n,
            "n_unsimulated": [0] * n,
            "undefined_reason": pl.Series([None] * n, dtype=pl.String),
            "n_calibration_tokens": [10] * n,
            "run_id": [run] * n,
            "partition": [str(layer)] * n,
            "polarity": ["positive"] * n,
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


def documents(n: int) -> pl.DataFrame:
    return pl.DataFrame({"doc_id": list(range(n)), "corpus": ["t"] * n, "source": ["s"] * n, "text": ["x"] * n})


def open_reader(store: ResultStore) -> subprocess.Popen:
    """Another process with the database open read-only; each line on its stdin runs one count."""
    code = textwrap.dedent(
        f"""
        import duckdb, sys
        c = duckdb.connect({str(store.database)!r}, read_only=True)
        for line in sys.stdin:
            print(c.execute(line).fetchone()[0], flush=True)
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def ask(reader: subprocess.Popen, sql: str) -> str:
    reader.stdin.write(sql + "\n")
    reader.stdin.flush()
    return reader.stdout.readline().strip()


def test_an_open_reader_does_not_block_writes_and_sees_new_partitions_without_a_refresh(tmp_path):
    store = ResultStore(tmp_path)
    store.write("scores", scores(0, 2), "0")
    store.refresh_views()
    reader = open_reader(store)
    try:
        assert ask(reader, "SELECT count(*) FROM scores") == "2"
        store.write("scores", scores(1, 3), "1")  # a backfill writing while the session is open
        assert store.refresh_views() == []  # nothing changed: no write lock needed, no error
        assert ask(reader, "SELECT count(*) FROM scores") == "5"
        store.write("documents", documents(2))  # a table seen for the first time needs a new view
        with pytest.raises(duckdb.IOException):
            store.refresh_views()  # the database file is the reader's; data files are not
    finally:
        reader.kill()
        reader.wait()
    assert store.refresh_views() == ["documents"]  # written at the next refresh after the reader closed


def test_views_are_written_only_when_new_or_changed(tmp_path):
    store = ResultStore(tmp_path)
    store.write("scores", scores(3, 2), "3")
    pl.read_parquet(store.path("scores", "3")).drop("undefined_reason").write_parquet(store.path("scores", "3"))
    assert store.refresh_views() == ["scores"]
    assert store.refresh_views() == []
    store.write("scores", scores(4, 2), "4")  # the column the older partition lacks is stored now
    assert store.refresh_views() == ["scores"]
    assert store.refresh_views() == []


@pytest.mark.parametrize("folder", ["o'brien data ü", "runs [v2] *"])
def test_a_data_directory_with_quotes_spaces_non_ascii_or_glob_characters_is_read_as_named(tmp_path, folder):
    store = ResultStore(tmp_path / folder / "data")
    store.write("scores", scores(0, 2), "0")
    store.write("scores", scores(1, 3), "1")
    store.refresh_views()
    assert count(store, "SELECT count(*) FROM scores") == 5
    decoy = ResultStore(tmp_path / "runs v *" / "data")  # what an unescaped glob could also match
    decoy.write("scores", scores(2, 7), "2")
    assert count(store, "SELECT count(*) FROM scores") == 5


def test_a_data_directory_duckdb_cannot_open_is_refused_naming_the_character(tmp_path):
    with pytest.raises(ValueError, match=r"cannot hold results: DuckDB reads '\?' in a database path"):
        ResultStore(tmp_path / "what?" / "data")


def test_results_stored_before_the_negative_side_existed_read_as_the_positive_side(tmp_path):
    store = ResultStore(tmp_path)
    store.path("scores", "3").parent.mkdir(parents=True)
    scores(3, 2).drop("polarity").write_parquet(store.path("scores", "3"))
    assert store.read("scores", ["3"])["polarity"].to_list() == ["positive", "positive"]
    store.refresh_views()
    with duckdb.connect(str(store.database), read_only=True) as connection:
        assert connection.execute("SELECT DISTINCT polarity FROM scores").fetchall() == [("positive",)]
