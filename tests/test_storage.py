import subprocess
import sys
import textwrap

import duckdb
import pandera.errors
import polars as pl
import pytest

from neuron_assets.storage.store import ResultStore


def scores(
    layer: int,
    n: int,
    run: str = "run-1",
    variant: str = "default",
    correlation: float = 0.5,
    scoring_set: str = "top_and_random",
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subject_model": ["m"] * n,
            "variant": [variant] * n,
            "layer": [layer] * n,
            "neuron": list(range(n)),
            "sample": [0] * n,
            "method": ["explanation"] * n,
            "explanation_neuron": list(range(n)),
            "scoring_set": [scoring_set] * n,
            "correlation": [correlation + (neuron % 4) / 10 for neuron in range(n)],
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


def documents(n: int) -> pl.DataFrame:
    return pl.DataFrame({"doc_id": list(range(n)), "corpus": ["t"] * n, "source": ["s"] * n, "text": ["x"] * n})


def count(store: ResultStore, sql: str) -> int:
    with store.connect() as connection:
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


def test_two_variants_of_one_layer_are_kept_side_by_side(tmp_path):
    store = ResultStore(tmp_path)
    store.write("scores", scores(3, 2, variant="a"), "3", ["m", "a"])
    store.write("scores", scores(3, 2, variant="b"), "3", ["m", "b"])
    assert store.path("scores", "3", ["m", "b"]) == tmp_path / "scores" / "m" / "b" / "3.parquet"
    assert store.read("scores", ["3"], ["m", "a"])["variant"].unique().to_list() == ["a"]
    store.refresh_views()
    assert count(store, "SELECT count(DISTINCT variant) FROM scores WHERE layer = 3") == 2


def explanations(layer: int, n: int, variant: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subject_model": ["m"] * n,
            "variant": [variant] * n,
            "run_id": ["r"] * n,
            "partition": [f"layer-{layer}"] * n,
            "polarity": ["positive"] * n,
            "layer": [layer] * n,
            "neuron": list(range(n)),
            "sample": [0] * n,
            "method": ["explanation"] * n,
            "explanation": [f"{variant} {i}" for i in range(n)],
            "raw_reply": ["x"] * n,
            "explainer_model": ["e"] * n,
            "prompt_version": ["v"] * n,
            "temperature": [1.0] * n,
            "excerpt_ids": [[0]] * n,
            "prompt_shortening": pl.Series([None] * n, dtype=pl.String),
        }
    )


@pytest.mark.parametrize("n_neurons, verdict", [(12, "variant_b better"), (4, "too few neurons")])
def test_variants_of_one_layer_are_compared_per_neuron_and_per_layer_with_a_bootstrap_interval(
    tmp_path, n_neurons, verdict
):
    """A verdict reads the interval only over at least verdict_rules.min_neurons (10) neurons."""
    store = ResultStore(tmp_path)
    for variant, correlation in (("a", 0.2), ("b", 0.5)):
        prefix = ["m", variant]
        both_sets = pl.concat(
            [
                scores(3, n_neurons, variant=variant, correlation=correlation, scoring_set=s)
                for s in ("top_and_random", "random_only")
            ]
        )
        store.write("scores", both_sets, "3", prefix)
        store.write("explanations", explanations(3, n_neurons, variant), "3", prefix)
    store.refresh_views()
    with duckdb.connect(str(store.database), read_only=True) as connection:
        neurons = connection.sql(
            "SELECT neuron, explanation_a, explanation_b, top_and_random_b_minus_a FROM variant_scores "
            "WHERE method = 'explanation' ORDER BY neuron"
        ).fetchall()
        layer = connection.sql(
            "SELECT variant_a, variant_b, n_paired, mean_score_a, mean_score_b, b_minus_a, difference_ci_low, "
            "difference_ci_high, verdict FROM variant_layers WHERE scoring_set = 'top_and_random'"
        ).fetchall()
    assert [(n, a, b) for n, a, b, _ in neurons] == [(i, f"a {i}", f"b {i}") for i in range(n_neurons)]
    assert [round(d, 9) for *_, d in neurons] == [0.3] * n_neurons
    ((a, b, n, mean_a, mean_b, difference, low, high, said),) = layer
    assert (a, b, n) == ("a", "b", n_neurons)
    assert (round(mean_a, 9), round(mean_b, 9), round(difference, 9)) == (0.35, 0.65, 0.3)
    assert round(low, 9) == round(high, 9) == 0.3  # every neuron differs by 0.3: no spread to resample
    assert said == verdict


def test_results_in_the_layout_before_experiments_are_moved_to_their_subject_model_and_the_default_variant(tmp_path):
    old = tmp_path / "data"
    (old / "excerpts").mkdir(parents=True)
    (old / "scores").mkdir()
    (old / "documents").mkdir()
    pl.DataFrame({"subject_model": ["gpt2"], "excerpt_id": [0]}).write_parquet(old / "excerpts" / "all.parquet")
    documents(2).write_parquet(old / "documents" / "all.parquet")
    scores(3, 2).drop("subject_model", "variant", "polarity").write_parquet(old / "scores" / "3.parquet")
    store = ResultStore(old)
    moved = store.migrate_old_layout()
    assert sorted(p.relative_to(old).as_posix() for p in moved) == [
        "documents/gpt2/all.parquet",
        "excerpts/gpt2/all.parquet",
        "scores/gpt2/default/3.parquet",
    ]
    migrated = store.read("scores", ["3"], ["gpt2", "default"])
    assert migrated.select("subject_model", "variant", "polarity").unique().rows() == [("gpt2", "default", "positive")]
    assert not (old / "scores" / "3.parquet").exists()
    assert store.migrate_old_layout() == []  # nothing left to move


def test_old_results_with_no_excerpts_to_name_their_subject_model_are_refused_and_left_in_place(tmp_path):
    (tmp_path / "scores").mkdir()
    scores(3, 2).write_parquet(tmp_path / "scores" / "3.parquet")
    with pytest.raises(ValueError, match="no .*excerpts.*naming their subject model"):
        ResultStore(tmp_path).migrate_old_layout()
    assert (tmp_path / "scores" / "3.parquet").exists()


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
    # derived views wait for explanations and simulations; verdict_rules reads no table
    assert created == ["scores", "verdict_rules"]


def open_reader(store: ResultStore) -> subprocess.Popen:
    """Another process with the database open read-only; each line on its stdin runs one count,
    answered with its value or, where the query fails, ``error: <the error's first line>``."""
    code = textwrap.dedent(
        f"""
        import sys
        from neuron_assets.storage.store import ResultStore
        c = ResultStore({store.location!r}, {str(store.root)!r}).connect()
        for line in sys.stdin:
            try:
                print(c.execute(line).fetchone()[0], flush=True)
            except Exception as error:
                print("error: " + " ".join(str(error).split()), flush=True)
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
    assert store.refresh_views() == ["scores", "verdict_rules"]
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
