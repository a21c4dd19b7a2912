import numpy as np
import polars as pl
import pytest

from neuron_assets.baselines.token_baselines import (
    lookup_fallback,
    predict_from_token_table,
    top_lookup_tokens,
    weight_based_table,
)
from neuron_assets.scorers.methods import check_methods
from neuron_assets.scorers.scoring import score_simulations

EXCERPTS = pl.DataFrame({"excerpt_id": [1, 2], "token_ids": [[10, 11, 12], [12, 13, 10]]})
SCORING = pl.DataFrame(
    {
        "layer": [0, 0],
        "neuron": [4, 4],
        "excerpt_id": [1, 2],
        "excerpt_kind": ["top", "random"],
        "activations": [[2.0, 0.0, 1.0], [1.0, 0.0, 2.0]],
    }
)
LOOKUP = pl.DataFrame(
    {
        "layer": [0, 0, 0],
        "neuron": [4, 4, 4],
        "token_id": [10, 11, 12],
        "count": [3, 1, 2],
        "mean_activation": [2.0, 0.5, 1.0],
    }
)


def test_the_lookup_table_predicts_each_tokens_mean_and_the_neurons_mean_for_unseen_tokens():
    predictions = predict_from_token_table(
        LOOKUP.rename({"mean_activation": "value"}), lookup_fallback(LOOKUP), SCORING, EXCERPTS, "lookup_table"
    )
    neuron_mean = (3 * 2.0 + 1 * 0.5 + 2 * 1.0) / 6  # token 13 was never seen in the explanation pool
    assert predictions.sort("excerpt_id")["predicted"].to_list() == [[2.0, 0.5, 1.0], [1.0, neuron_mean, 2.0]]
    assert predictions["method"].to_list() == ["lookup_table"] * 2
    assert predictions.sort("excerpt_id")["true_activations"].to_list() == SCORING["activations"].to_list()


def test_a_token_without_a_value_or_fallback_is_an_error_naming_it():
    with pytest.raises(ValueError, match="weight_based: no value for token 13 of layer 0 neuron 4"):
        predict_from_token_table(LOOKUP.rename({"mean_activation": "value"}), None, SCORING, EXCERPTS, "weight_based")


def test_the_weight_based_table_asks_the_model_for_each_scored_token_and_neuron_once():
    asked = []

    def direct(layer, neurons, token_ids):
        asked.append((layer, neurons, token_ids))
        return np.array([[100.0 * t + n for n in neurons] for t in token_ids])

    scoring = pl.concat([SCORING, SCORING.with_columns(neuron=pl.lit(9, dtype=pl.Int64))])
    table = weight_based_table(direct, scoring, EXCERPTS)
    assert asked == [(0, [4, 9], [10, 11, 12, 13])]
    assert dict(zip(zip(table["neuron"], table["token_id"]), table["value"])) == {
        (n, t): 100.0 * t + n for n in (4, 9) for t in (10, 11, 12, 13)
    }
    predictions = predict_from_token_table(table, None, scoring, EXCERPTS, "weight_based")
    assert predictions.filter(pl.col("neuron") == 9, pl.col("excerpt_id") == 2)["predicted"].to_list() == [
        [1209.0, 1309.0, 1009.0]
    ]


def test_a_neuron_that_only_reads_its_token_is_scored_perfectly_by_the_lookup_table():
    """A synthetic token neuron: activation = a fixed value per token, whatever the context."""
    per_token = {10: 3.0, 11: 0.0, 12: 1.0, 13: 0.0}
    scoring = SCORING.with_columns(
        activations=pl.Series([[per_token[t] for t in ids] for ids in EXCERPTS["token_ids"]])
    )
    lookup = pl.DataFrame(
        {"layer": [0] * 4, "neuron": [4] * 4, "token_id": list(per_token), "value": list(per_token.values())}
    )
    predictions = predict_from_token_table(lookup, lookup_fallback(LOOKUP), scoring, EXCERPTS, "lookup_table")
    frame = predictions.rename({"predicted": "simulated"}).with_columns(
        sample=pl.lit(0, dtype=pl.Int64), explanation_neuron=pl.lit(None, dtype=pl.Int64)
    )
    assert score_simulations(frame).filter(pl.col("scoring_set") == "top_and_random")["correlation"][
        0
    ] == pytest.approx(1.0)


def test_the_lookup_explanation_is_shown_the_most_active_tokens_seen_often_enough():
    texts = pl.DataFrame({"token_id": [10, 11, 12], "token": [" cat", " dog", " the"]})
    top = top_lookup_tokens(LOOKUP, texts, n_tokens=2, min_count=2)
    assert top.row(0, named=True) == {
        "layer": 0,
        "neuron": 4,
        "token": [" cat", " the"],
        "mean_activation": [2.0, 1.0],
        "count": [3, 2],
    }


def test_an_unknown_or_misplaced_method_name_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['lookup'\]; known methods are"):
        check_methods(["explanation", "lookup"], ("explanation",), "simulations config 'methods'")
    with pytest.raises(ValueError, match=r"method\(s\) \['weight_based'\] are not made here"):
        check_methods(["weight_based"], ("explanation", "control"), "simulations config 'methods'")
    assert check_methods(["control", "control"], ("control",), "x") == ["control"]
