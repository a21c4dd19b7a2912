import polars as pl
import pytest

from neuron_assets.baselines.controls import compare_methods, control_explanations


def _explanations(neurons_by_layer):
    rows = [
        (layer, neuron, 0, "explanation", f"explanation of {neuron}")
        for layer, neurons in neurons_by_layer.items()
        for neuron in neurons
    ]
    return pl.DataFrame(rows, schema=["layer", "neuron", "sample", "method", "explanation"], orient="row")


def test_every_neuron_gets_another_neurons_explanation_from_its_layer_each_used_once():
    controls = control_explanations(_explanations({0: [3, 5, 8, 9], 1: [2, 4]}), seed=1)
    for layer, group in controls.group_by("layer"):
        assert (group["neuron"] != group["explanation_neuron"]).all()
        assert sorted(group["explanation_neuron"]) == sorted(group["neuron"])
    for row in controls.iter_rows(named=True):
        assert row["explanation"] == f"explanation of {row['explanation_neuron']}"
    assert set(controls["method"]) == {"control"}
    assert controls.equals(control_explanations(_explanations({0: [3, 5, 8, 9], 1: [2, 4]}), seed=1))


def test_a_layer_with_one_explained_neuron_has_no_control():
    assert control_explanations(_explanations({0: [3]})).is_empty()


def _scores(by_method):
    rows = [
        (0, neuron, method, "top_and_random", value)
        for method, values in by_method.items()
        for neuron, value in enumerate(values)
    ]
    return pl.DataFrame(rows, schema=["layer", "neuron", "method", "scoring_set", "correlation"], orient="row")


def test_the_comparison_gives_means_paired_differences_and_intervals_that_contain_them():
    scores = _scores({"explanation": [0.5, 0.6, 0.7, 0.4], "control": [0.1, 0.2, 0.0, 0.1]})
    table = compare_methods(scores, n_resamples=500)
    control = table.filter(pl.col("method") == "control").row(0, named=True)
    assert control["mean_score"] == pytest.approx(0.1)
    assert control["explanation_minus_method"] == pytest.approx(0.45)
    assert 0 < control["difference_ci_low"] <= 0.45 <= control["difference_ci_high"]
    assert control["mean_ci_low"] <= 0.1 <= control["mean_ci_high"]
    own = table.filter(pl.col("method") == "explanation").row(0, named=True)
    assert own["explanation_minus_method"] == 0 and own["difference_ci_low"] == own["difference_ci_high"] == 0


def test_a_method_no_better_than_control_has_an_interval_spanning_zero():
    scores = _scores({"explanation": [0.1, -0.2, 0.3, 0.0, -0.1], "control": [0.0, 0.1, -0.1, 0.2, 0.0]})
    control = compare_methods(scores).filter(pl.col("method") == "control").row(0, named=True)
    assert control["difference_ci_low"] < 0 < control["difference_ci_high"]


def test_undefined_scores_are_left_out_and_counted_by_what_remains():
    scores = _scores({"explanation": [0.5, None, 0.7], "lookup_table": [0.2, 0.3, None]})
    row = compare_methods(scores).filter(pl.col("method") == "lookup_table").row(0, named=True)
    assert row["n_neurons"] == 2 and row["n_paired"] == 1
    assert row["explanation_minus_method"] == pytest.approx(0.3)
    assert row["difference_ci_low"] is None  # one pair: no interval
