"""Explainable directions through Dagster (method.md §9): one run of recording and the directions
group on the tiny offline GPT-2 of test_ablation (2 layers, MLP width 24), what it stores and says,
and its refusals of bad input, which write nothing.
"""

import json

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest
import torch
from test_ablation import D_MLP, WORDS, save_tiny_gpt2

from neuron_assets.directions.ascent import random_directions
from neuron_assets.storage.store import ResultStore

DIRECTIONS = {"n_directions": 3, "rounds": 3, "steps_per_round": 30, "n_top": 3, "n_random": 3, "batch_size": 8}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "tiny_gpt2")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    documents = [" ".join(rng.choice(WORDS, size=40)) for _ in range(24)]
    (folder / "words.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in documents))
    return folder


def run(folder, corpus, data_dir, groups, directions, layer=1, **options):
    """Materialize ``groups`` for ``layer`` on the tiny model, results under ``data_dir``."""
    from neuron_assets.defs.definitions import build_definitions
    from neuron_assets.defs.experiments import Experiment
    from neuron_assets.demo import materialize_layers
    from neuron_assets.settings import Settings

    config = {
        "ops": {
            "documents": {"config": {"source": str(corpus)}},
            "excerpts": {"config": {"length": 16}},
            "activation_records": {"config": {"selection": "list", "neuron_indices": [2, 5], "top_k": 4}},
            "direction_rounds": {"config": directions},
        }
    }
    settings = Settings(
        subject_models=(str(folder),),
        data_dir=data_dir,
        llm_base_url=None,
        explainer_model=None,
        simulator_model=None,
        device="cpu",
    )
    defs = build_definitions(settings, cache=False)
    with dg.DagsterInstance.ephemeral() as instance:
        return materialize_layers(defs, layer, layer, config, instance, groups, Experiment(str(folder)), **options)


@pytest.fixture(scope="module")
def finished(folder, corpus, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("results")
    result = run(folder, corpus, data_dir, ("recording", "directions"), DIRECTIONS)
    return result, ResultStore(data_dir)


def test_every_round_of_every_direction_is_stored_with_a_unit_theta_starting_from_the_seeded_random_start(finished):
    result, store = finished
    assert result.success
    with duckdb.connect(str(store.database), read_only=True) as connection:
        rounds = connection.sql("SELECT * FROM direction_rounds ORDER BY direction, round").pl()
    assert rounds.height == 3 * 3
    assert set(rounds["explanation_kind"]) == {"lookup_table"}
    assert all(text.startswith("lookup table, top tokens: ") for text in rounds["explanation"])
    thetas = np.asarray(rounds["theta"].to_list())
    assert thetas.shape == (9, D_MLP)
    np.testing.assert_allclose(np.linalg.norm(thetas, axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(thetas[rounds["round"].to_numpy() == 0], random_directions(3, D_MLP, 0))
    assert rounds.filter(rounds["round"] == 2)["correlation_after_update"].is_null().all()  # no update after the last
    assert rounds["correlation"].is_not_null().all()
    assert set(rounds["partition"]) == {"layer-1"}


def test_the_ascent_raises_the_score_of_the_directions_it_moves(finished):
    _, store = finished
    with duckdb.connect(str(store.database), read_only=True) as connection:
        moved = connection.execute(
            "SELECT count(*), count(*) FILTER (WHERE correlation_after_update > correlation) FROM direction_rounds "
            "WHERE round < 2"
        ).fetchone()
        start, found = connection.execute(
            "SELECT avg(start_correlation), avg(found_correlation) FROM direction_summaries"
        ).fetchone()
    assert moved[0] == 6 and moved[1] == 6  # each Adam step set raised the fixed simulation's correlation
    assert found > start


def test_the_summary_holds_each_directions_scores_cosines_and_truncation(finished):
    _, store = finished
    with duckdb.connect(str(store.database), read_only=True) as connection:
        summary = connection.sql("SELECT * FROM direction_summaries ORDER BY direction").pl()
        last = connection.sql("SELECT direction, correlation FROM direction_rounds WHERE round = 2 ORDER BY 1").pl()
        first = connection.sql("SELECT direction, correlation FROM direction_rounds WHERE round = 0 ORDER BY 1").pl()
    assert summary["direction"].to_list() == [0, 1, 2]
    assert summary["found_correlation"].to_list() == last["correlation"].to_list()
    assert summary["start_correlation"].to_list() == first["correlation"].to_list()
    assert all(0.0 <= c <= 1.0 for c in summary["max_abs_cosine"])
    assert set(summary["neurons_to_recover"]) <= {1, 2, 4, 8, 16, D_MLP}
    recovered = summary.filter(summary["neurons_to_recover"].is_not_null())
    assert (recovered["recovered_correlation"] >= 0.9 * recovered["found_correlation"] - 1e-12).all()
    weights = np.abs(np.asarray(summary["top_weights"].to_list()))
    assert (np.diff(weights, axis=1) <= 1e-12).all()  # largest |weight| first


def test_the_metadata_compares_found_start_and_neurons_and_says_when_no_scores_are_stored(finished):
    result, _ = finished
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "direction_summaries"]
    metadata = event.materialization.metadata
    rows = {row.data["what"]: row.data for row in metadata["comparison"].records}
    assert list(rows) == [
        "found directions (last round)",
        "random starting directions (round 0)",
        "layer neurons, this run's lookup table",
        "recorded neurons, stored lookup_table scores",
    ]
    assert rows["found directions (last round)"]["n"] == 3
    assert rows["found directions (last round)"]["ci_low"] <= rows["found directions (last round)"]["mean"]
    assert rows["recorded neurons, stored lookup_table scores"]["note"] == "no stored scores for this layer"
    assert rows["recorded neurons, stored lookup_table scores"]["n"] == 0
    assert rows["layer neurons, this run's lookup table"]["n"] + rows["layer neurons, this run's lookup table"][
        "n_undefined"
    ] == min(64, D_MLP)
    assert "mean_found_score" in metadata and "median_neurons_to_recover" in metadata
    [rounds] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "direction_rounds"]
    assert rounds.materialization.metadata["plot"].value.startswith("![score by round](data:image/svg+xml;base64,")


def test_the_ascent_plot_draws_one_line_per_direction_and_a_point_per_round():
    from neuron_assets.viewer.plots import direction_ascent

    rounds = pl.DataFrame(
        {"layer": [0] * 6, "direction": [0, 0, 0, 1, 1, 1], "round": [0, 1, 2] * 2, "correlation": [0.1, 0.3, 0.5] * 2}
    )
    svg = direction_ascent(rounds)
    assert svg.count("<polyline") == 2 and svg.count('class="round"') == 6


def failure(folder, corpus, data_dir, groups, directions, layer=1):
    result = run(folder, corpus, data_dir, groups, directions, layer, raise_on_error=False)
    assert not result.success
    [event] = [e for e in result.all_events if e.is_step_failure]
    return event.step_failure_data.error.cause.message if event.step_failure_data.error.cause else ""


def test_more_directions_than_d_mlp_is_refused_and_writes_nothing(folder, corpus, tmp_path):
    message = failure(folder, corpus, tmp_path, ("recording", "directions"), {**DIRECTIONS, "n_directions": D_MLP + 1})
    assert f"{D_MLP + 1} directions asked for a layer of d_mlp {D_MLP}" in message
    assert not ResultStore(tmp_path).has_results("direction_rounds")
    assert not ResultStore(tmp_path).has_results("direction_summaries")


def test_a_layer_not_recorded_is_refused_by_name_and_writes_nothing(finished, folder, corpus, tmp_path):
    run(folder, corpus, tmp_path, ("recording",), DIRECTIONS, layer=1)
    message = failure(folder, corpus, tmp_path, ("directions",), DIRECTIONS, layer=0)
    assert "layer(s) [0] have not been recorded" in message
    assert not ResultStore(tmp_path).has_results("direction_rounds")


def test_the_direction_layers_view_gives_start_and_found_means_with_intervals(finished):
    _, store = finished
    with duckdb.connect(str(store.database), read_only=True) as connection:
        view = connection.sql("SELECT * FROM direction_layers").pl()
        start, found = connection.execute(
            "SELECT avg(start_correlation), avg(found_correlation) FROM direction_summaries"
        ).fetchone()
    assert view.height == 1 and view["layer"][0] == 1 and view["n_directions"][0] == 3
    assert view["mean_start"][0] == pytest.approx(start) and view["mean_found"][0] == pytest.approx(found)
    assert view["found_ci_low"][0] <= view["mean_found"][0] <= view["found_ci_high"][0]


def stored_scores(folder, correlations):
    """A ``scores`` partition for layer 1 holding lookup_table scores of neurons 0, 1, ...: as a scoring run writes."""
    from neuron_assets.defs.experiments import Experiment
    from neuron_assets.storage.schemas import Scores, polars_schema

    rows = [
        {
            "run_id": "earlier",
            "partition": "layer-1",
            "subject_model": str(folder),
            "polarity": "positive",
            "variant": "default",
            "run_settings": None,
            "overridden_settings": None,
            "layer": 1,
            "neuron": neuron,
            "sample": 0,
            "method": method,
            "explanation_neuron": None,
            "scoring_set": scoring_set,
            "correlation": value if method == "lookup_table" and scoring_set == "top_and_random" else 0.99,
            "explained_variance": None,
            "calibration_slope": None,
            "calibration_intercept": None,
            "n_calibration_tokens": 0,
            "n_tokens": 32,
            "n_unsimulated": 0,
            "undefined_reason": None,
        }
        for neuron, value in enumerate(correlations)
        for method in ("lookup_table", "weight_based")
        for scoring_set in ("top_and_random", "random_only")
    ]
    schema = polars_schema(Scores)
    return pl.DataFrame([{c: row.get(c) for c in schema} for row in rows], schema=schema), Experiment(str(folder))


def test_stored_lookup_table_scores_of_the_layer_join_the_comparison_and_its_view(folder, corpus, tmp_path):
    run(folder, corpus, tmp_path, ("recording",), DIRECTIONS)
    frame, experiment = stored_scores(folder, [0.2, 0.4, 0.6])
    ResultStore(tmp_path).write("scores", frame, "1", experiment.prefix("scores"))
    result = run(folder, corpus, tmp_path, ("directions",), {**DIRECTIONS, "rounds": 1})
    assert result.success
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "direction_summaries"]
    rows = {row.data["what"]: row.data for row in event.materialization.metadata["comparison"].records}
    stored = rows["recorded neurons, stored lookup_table scores"]
    assert stored["n"] == 3 and stored["mean"] == pytest.approx(0.4)  # only lookup_table, top_and_random
    assert stored["ci_low"] == round(0.4 - 1.96 * 0.2 / np.sqrt(3), 3)  # mean - 1.96 standard errors, as shown
    with duckdb.connect(str(ResultStore(tmp_path).database), read_only=True) as connection:
        n_neurons, mean_neurons = connection.execute(
            "SELECT n_neurons, mean_neurons FROM direction_comparison WHERE layer = 1"
        ).fetchone()
    assert (n_neurons, mean_neurons) == (3, pytest.approx(0.4))


class ConstantLayer:
    """A stand-in subject model whose layer is the same vector at every token: no variance to whiten."""

    def __init__(self, width):
        self.width = width
        self.passes = 0

    def __call__(self, tokens, hooks, stop_at_layer):
        self.passes += 1
        for hook in hooks.values():
            hook(torch.ones(*tokens.shape, self.width))


def test_a_covariance_with_no_variance_is_refused_after_one_pass_naming_the_layer():
    from neuron_assets.directions.search import Corpus, DirectionsError, SearchSettings, search

    excerpts = pl.DataFrame(
        {
            "token_ids": [[i, i + 1, i + 2, i + 3] for i in range(12)],
            "tokens": [[str(i), str(i + 1), str(i + 2), str(i + 3)] for i in range(12)],
            "pool": ["explanation"] * 6 + ["scoring"] * 6,
        }
    )
    layer = ConstantLayer(width=4)
    settings = SearchSettings(n_directions=2, n_top=2, n_random=2, batch_size=4)
    with pytest.raises(DirectionsError, match="layer 3: the covariance is singular: the activations have no variance"):
        search(layer, Corpus.of(excerpts, None), 3, 4, settings)
    assert layer.passes == 2  # the covariance pass over the 6 explanation excerpts, in batches of 4; no round
