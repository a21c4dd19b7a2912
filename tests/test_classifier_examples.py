"""Which excerpts the classifier scorers ask about: activating top and quantile excerpts against
silent random ones, all from the scoring pool."""

import polars as pl
import pytest

from neuron_assets.scorers.examples import EXAMPLE_SCHEMA, select_examples


def record(excerpt_id, kind, rank, peak, *, pool="scoring", quantile_bin=None, layer=2, neuron=7):
    activations = [0.0, peak, 0.0]
    return {
        "layer": layer,
        "neuron": neuron,
        "polarity": "positive",
        "pool": pool,
        "kind": kind,
        "quantile_bin": quantile_bin,
        "rank": rank,
        "excerpt_id": excerpt_id,
        "max_activation": peak,
        "activations": activations,
    }


def excerpts_for(records):
    ids = sorted(set(records["excerpt_id"].to_list()))
    return pl.DataFrame({"excerpt_id": ids, "tokens": [["a", f" w{i}", "."] for i in ids]})


def neuron_records():
    """Neuron max 10 (an explanation-pool top excerpt). Scoring pool: 3 top, 2 quantile bins, 5 random."""
    rows = [
        record(100, "top", 0, 10.0, pool="explanation"),
        record(101, "random", 0, 0.0, pool="explanation"),  # never recorded, but must be ignored if present
        record(1, "top", 0, 9.0),
        record(2, "top", 1, 8.0),
        record(3, "top", 2, 7.0),
        record(20, "quantile", 0, 3.0, quantile_bin="0.9-0.99"),
        record(21, "quantile", 1, 2.5, quantile_bin="0.9-0.99"),
        record(30, "quantile", 0, 0.5, quantile_bin="0.5-0.9"),  # silent (0.5 <= 0.1 x 10): left out
        record(10, "random", 0, 0.2),
        record(11, "random", 1, 4.0),  # not silent: asked about in neither role
        record(12, "random", 2, 1.0),  # at the bound itself: silent
        record(13, "random", 3, 0.0),
        record(20, "random", 4, 3.0),  # the quantile excerpt 20 is also a random one
    ]
    return pl.DataFrame(rows)


def test_activating_are_top_and_one_quantile_excerpt_per_bin_and_non_activating_are_silent_random_ones():
    records = neuron_records()
    examples = select_examples(records, excerpts_for(records), n_top=2, n_non_activating=3)
    chosen = sorted(zip(examples["excerpt_id"], examples["example_kind"], examples["activating"], strict=True))
    assert chosen == [
        (1, "top", True),
        (2, "top", True),
        (10, "non_activating", False),
        (12, "non_activating", False),
        (13, "non_activating", False),
        (20, "quantile", True),  # rank 0 of its bin; the silent bin gives none
    ]
    assert dict(examples.schema) == EXAMPLE_SCHEMA
    by_id = {row["excerpt_id"]: row for row in examples.iter_rows(named=True)}
    assert by_id[12]["tokens"] == ["a", " w12", "."]
    assert by_id[12]["activations"] == [0.0, 1.0, 0.0]


def test_only_the_scoring_pool_is_asked_about():
    records = neuron_records()
    examples = select_examples(records, excerpts_for(records), n_top=3, n_non_activating=3)
    assert not {100, 101} & set(examples["excerpt_id"].to_list())


def test_the_order_is_shuffled_with_the_seed():
    records = neuron_records()
    excerpts = excerpts_for(records)
    first = select_examples(records, excerpts, n_top=3, n_non_activating=3, seed=0)["excerpt_id"].to_list()
    again = select_examples(records, excerpts, n_top=3, n_non_activating=3, seed=0)["excerpt_id"].to_list()
    other = select_examples(records, excerpts, n_top=3, n_non_activating=3, seed=1)["excerpt_id"].to_list()
    assert first == again
    assert sorted(first) == sorted(other) and first != other


def test_too_few_silent_random_excerpts_is_an_error_naming_the_neuron_and_the_numbers():
    records = neuron_records()
    with pytest.raises(ValueError) as error:
        select_examples(records, excerpts_for(records), n_top=2, n_non_activating=4)
    message = str(error.value)
    assert "layer 2 neuron 7 (positive)" in message
    assert "need 4 non-activating excerpts but only 3" in message
    assert "at most 0.1 x 10 = 1" in message


def test_too_few_top_excerpts_is_an_error_naming_the_numbers():
    records = neuron_records()
    with pytest.raises(ValueError, match=r"layer 2 neuron 7 \(positive\): .*need 5 top scoring-pool excerpts but 3"):
        select_examples(records, excerpts_for(records), n_top=5, n_non_activating=3)


def test_records_of_several_neurons_or_a_silent_neuron_are_refused():
    records = pl.concat([neuron_records(), pl.DataFrame([record(5, "top", 0, 1.0, neuron=8)])])
    with pytest.raises(ValueError, match="one neuron at a time"):
        select_examples(records, excerpts_for(records))
    silent = pl.DataFrame([record(1, "top", 0, 0.0), record(2, "random", 0, 0.0)])
    with pytest.raises(ValueError, match="no excerpt activates it"):
        select_examples(silent, excerpts_for(silent), n_top=1, n_non_activating=1)


def test_an_excerpt_missing_from_the_excerpts_table_is_an_error():
    records = neuron_records()
    with pytest.raises(ValueError, match=r"excerpts \[13\] are not in the excerpts given"):
        select_examples(records, excerpts_for(records).filter(pl.col("excerpt_id") != 13), n_top=2, n_non_activating=3)


def test_every_neuron_with_too_few_examples_is_named_in_one_error_before_any_call():
    from neuron_assets.scorers.classifier_neurons import neuron_examples

    records = pl.concat(
        [
            neuron_records(),
            neuron_records().with_columns(neuron=pl.lit(8, pl.Int64)),
            neuron_records().with_columns(neuron=pl.lit(9, pl.Int64)),
        ]
    )
    explanations = pl.DataFrame({"layer": [2, 2, 2], "neuron": [7, 8, 9]})
    with pytest.raises(ValueError, match=r"3 neuron\(s\) cannot be scored:\n.*neuron 7.*\n.*neuron 8.*\n.*neuron 9"):
        neuron_examples(explanations, records, excerpts_for(records), n_top=3, n_non_activating=4)
    chosen = neuron_examples(explanations, records, excerpts_for(records), n_top=3, n_non_activating=3)
    assert sorted(chosen) == [(2, 7), (2, 8), (2, 9)]
    with pytest.raises(ValueError, match=r"no activation records for the explained \(layer, neuron\) \[\(2, 10\)\]"):
        neuron_examples(pl.DataFrame({"layer": [2], "neuron": [10]}), records, excerpts_for(records))
