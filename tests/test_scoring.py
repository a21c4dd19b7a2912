import math

import numpy as np
import polars as pl
import pytest

from neuron_assets.scorers.scoring import fit_calibration, score, score_simulations


def test_correlation_and_calibration_match_hand_computed_values():
    simulated, true = [[1, 2], [3, 4]], [[1, 3], [2, 4]]
    # deviations s: -1.5 -.5 .5 1.5 ; a: -1.5 .5 -.5 1.5 -> cov 4/4, var 5/4 each
    assert fit_calibration(simulated, true) == pytest.approx((0.8, 0.5))
    result = score(simulated, true, (0.8, 0.5))
    assert result.correlation == pytest.approx(0.8)
    assert (result.calibration_slope, result.calibration_intercept) == (0.8, 0.5)
    assert result.explained_variance == pytest.approx(0.64)
    assert result.n_tokens == 4 and result.undefined_reason is None


def test_a_calibration_fitted_on_the_scored_tokens_would_only_repeat_rho_squared():
    simulated, true = [[0.0, 3.0, 1.0, 7.0, 2.0]], [[0.2, 1.0, 0.1, 2.5, 0.3]]
    result = score(simulated, true, fit_calibration(simulated, true))
    assert result.explained_variance == pytest.approx(result.correlation**2)


def test_a_held_out_calibration_gives_explained_variance_below_rho_squared_and_possibly_negative():
    simulated, true = [[0.0, 3.0, 1.0, 7.0, 2.0]], [[0.2, 1.0, 0.1, 2.5, 0.3]]
    held_out = fit_calibration([[0.0, 10.0, 0.0, 10.0]], [[0.0, 0.5, 0.1, 0.4]])  # a much flatter neuron
    result = score(simulated, true, held_out)
    assert result.explained_variance < result.correlation**2 - 0.1
    overshooting = score(simulated, true, (2.0, 0.0))
    assert overshooting.explained_variance < 0
    assert score(simulated, true).explained_variance is None  # no calibration, no explained variance


def test_a_constant_simulation_on_the_calibration_excerpts_cannot_be_calibrated():
    assert fit_calibration([[3.0, 3.0, 3.0]], [[0.0, 1.0, 2.0]]) is None


def test_scores_pool_tokens_across_excerpts_instead_of_averaging_per_excerpt():
    simulated = [[0, 1], [5, 6]]
    true = [[1, 0], [10, 9]]
    # each excerpt alone is perfectly anti-correlated; pooled, the big excerpt dominates
    assert score(simulated, true).correlation > 0.9


def test_constant_true_activations_give_an_undefined_score_with_reason():
    result = score([[1, 2, 3]], [[0, 0, 0]])
    assert result.correlation is None and result.explained_variance is None
    assert "true activations are constant" in result.undefined_reason


def test_constant_simulation_gives_an_undefined_score_with_reason():
    result = score([[4, 4, 4]], [[0, 1, 0]])
    assert result.correlation is None
    assert "simulated activations are constant" in result.undefined_reason


def test_unsimulated_tokens_count_as_zero_and_are_counted():
    result = score([[None, 1, 2, 3]], [[100, 1, 2, 3]])
    assert result.correlation == pytest.approx(float(np.corrcoef([0, 1, 2, 3], [100, 1, 2, 3])[0, 1]))
    assert result.n_tokens == 4 and result.n_unsimulated == 1


def test_a_simulator_cannot_raise_its_score_by_leaving_the_tokens_it_gets_wrong_unsimulated():
    true = [[9, 8, 0, 0, 0, 0, 0, 0, 7, 0]]
    silent = [[None, None, 0, 0, 0, 0, 0, 0, 7, 0]]  # no value where the neuron fires hardest
    says_zero = [[0, 0, 0, 0, 0, 0, 0, 0, 7, 0]]
    kept = [i for i, value in enumerate(silent[0]) if value is not None]
    dropped_score = np.corrcoef([silent[0][i] for i in kept], [true[0][i] for i in kept])[0, 1]
    assert dropped_score == pytest.approx(1.0)  # what dropping the silent tokens would report
    result = score(silent, true)
    assert result.correlation == pytest.approx(score(says_zero, true).correlation)
    assert result.correlation < 0.6
    assert result.n_tokens == 10 and result.n_unsimulated == 2


def test_too_few_tokens_is_undefined():
    assert "at least 2" in score([[None]], [[1]]).undefined_reason


def test_mismatched_lengths_are_a_bug_not_a_score():
    with pytest.raises(ValueError, match="excerpt 0"):
        score([[1, 2]], [[1]])


def _simulations():
    rows = [
        (0, 7, 0, "explanation", 7, 1, "top", [0.0, 9.0], [0.0, 5.0]),
        (0, 7, 0, "explanation", 7, 2, "random", [1.0, 0.0], [0.0, 0.0]),
        (0, 7, 0, "explanation", 7, 3, "random", [0.0, 2.0], [0.0, 0.0]),
        (0, 7, 0, "explanation", 7, 4, "calibration_top", [0.0, 10.0], [0.0, 2.0]),
        (0, 7, 0, "explanation", 7, 5, "calibration_random", [0.0, 0.0], [0.0, 0.0]),
        (0, 7, 0, "control", 9, 1, "top", [3.0, 0.0], [0.0, 5.0]),
        (0, 7, 0, "control", 9, 2, "random", [1.0, 0.0], [0.0, 0.0]),
        (0, 7, 0, "control", 9, 3, "random", [0.0, 2.0], [0.0, 0.0]),
    ]
    return pl.DataFrame(
        rows,
        schema=[
            "layer",
            "neuron",
            "sample",
            "method",
            "explanation_neuron",
            "excerpt_id",
            "excerpt_kind",
            "simulated",
            "true_activations",
        ],
        orient="row",
    )


def test_score_table_has_top_and_random_and_random_only_rows_per_method():
    table = score_simulations(_simulations())
    assert table.select("method", "scoring_set").rows() == [
        ("explanation", "top_and_random"),
        ("explanation", "random_only"),
        ("control", "top_and_random"),
        ("control", "random_only"),
    ]
    top_and_random, random_only, control, _ = table.iter_rows(named=True)
    assert top_and_random["n_tokens"] == 6 and not math.isnan(top_and_random["correlation"])
    # random excerpts alone never fire: undefined, stored as null with its reason
    assert random_only["correlation"] is None
    assert "constant" in random_only["undefined_reason"]
    assert control["explanation_neuron"] == 9 and control["correlation"] < 0


def test_the_calibration_is_fitted_on_the_calibration_excerpts_only():
    explanation = score_simulations(_simulations()).row(0, named=True)
    assert explanation["n_calibration_tokens"] == 4
    # calibration excerpts: 10 -> 2 and 0 -> 0, so slope 0.2 and intercept 0
    assert explanation["calibration_slope"] == pytest.approx(0.2)
    assert explanation["calibration_intercept"] == pytest.approx(0.0)
    simulated = np.array([0, 9, 1, 0, 0, 2.0])
    true = np.array([0, 5, 0, 0, 0, 0.0])
    expected = 1 - np.mean((0.2 * simulated - true) ** 2) / np.var(true)
    assert explanation["explained_variance"] == pytest.approx(expected)
    assert explanation["explained_variance"] != pytest.approx(explanation["correlation"] ** 2)


def test_a_method_without_calibration_excerpts_has_a_correlation_but_no_explained_variance():
    control = score_simulations(_simulations()).row(2, named=True)
    assert control["correlation"] is not None
    assert control["explained_variance"] is None and control["n_calibration_tokens"] == 0
