"""Explainable directions (method.md §9): covariance, whitening, virtual neurons, the ascent."""

import tracemalloc

import numpy as np
import pytest
import torch

from neuron_assets.directions.ascent import (
    Explained,
    ascend,
    coordinate_ascent,
    correlation,
    direction_projection,
    random_directions,
    rounds_frame,
    virtual_neurons,
)
from neuron_assets.directions.covariance import CovarianceAccumulator, inverse_sqrt
from neuron_assets.storage.schemas import DirectionRounds, polars_schema


def correlated_activations(n_tokens: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((width, width)) * np.linspace(0.1, 3.0, width)
    return rng.standard_normal((n_tokens, width)) @ mixing + rng.normal(5.0, 2.0, width)


def test_the_covariance_fed_in_batches_equals_numpy_cov_on_the_whole():
    activations = correlated_activations(1000, 12)
    accumulator = CovarianceAccumulator(12)
    for batch in np.split(activations, [1, 300, 300, 777]):
        accumulator.add(batch)
    accumulator.add(torch.as_tensor(activations[:0], dtype=torch.float32))
    assert accumulator.count == 1000
    np.testing.assert_allclose(accumulator.covariance(), np.cov(activations, rowvar=False), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(accumulator.mean(), activations.mean(axis=0), rtol=1e-12)


def test_the_covariance_survives_a_large_common_offset():
    activations = correlated_activations(500, 6) + 1e6  # naive float64 sums would lose most digits
    accumulator = CovarianceAccumulator(6)
    for batch in np.array_split(activations, 7):
        accumulator.add(batch)
    np.testing.assert_allclose(accumulator.covariance(), np.cov(activations, rowvar=False), rtol=1e-8)


def test_whitened_activations_have_identity_covariance():
    activations = correlated_activations(5000, 16)
    accumulator = CovarianceAccumulator(16)
    accumulator.add(torch.as_tensor(activations))
    whitening = inverse_sqrt(accumulator.covariance(), n_tokens=accumulator.count)
    whitened = activations @ whitening.matrix
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(16), atol=1e-8)
    assert whitening.n_floored == 0


def test_virtual_neurons_of_many_directions_come_from_one_product_and_have_unit_variance():
    activations = correlated_activations(4000, 10)
    whitening = inverse_sqrt(np.cov(activations, rowvar=False))
    thetas = random_directions(10, 10, seed=1)
    projection = direction_projection(whitening, thetas)
    assert projection.shape == (10, 10)
    virtual = virtual_neurons(activations.reshape(40, 100, 10), projection)  # (excerpts, tokens, width)
    assert virtual.shape == (40, 100, 10)
    np.testing.assert_allclose(virtual[3, 7, 4], activations[307] @ whitening.matrix @ thetas[4])
    np.testing.assert_allclose(virtual.reshape(-1, 10).var(axis=0, ddof=1), np.ones(10), rtol=1e-8)


def test_tiny_eigenvalues_are_floored_at_eps_times_the_largest():
    rng = np.random.default_rng(2)
    activations = rng.standard_normal((400, 5))
    activations[:, 4] = 0.0  # a dead neuron: an exact zero eigenvalue
    whitening = inverse_sqrt(np.cov(activations, rowvar=False), n_tokens=400, eps=1e-4)
    assert whitening.n_floored == 1
    gain = np.linalg.norm(whitening.matrix @ np.eye(5)[4])
    assert gain == pytest.approx(1.0 / np.sqrt(1e-4 * whitening.largest_eigenvalue))


def test_the_accumulator_holds_eight_bytes_per_entry_of_the_width_squared():
    width = 1536  # the default subject model's d_mlp
    tracemalloc.start()
    accumulator = CovarianceAccumulator(width)
    accumulator.add(np.ones((4, width), dtype=np.float32))
    _, peak_after_start = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    accumulator.add(np.ones((4, width), dtype=np.float32))
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert accumulator.nbytes == 8 * width * width + 16 * width
    assert accumulator.nbytes <= current <= accumulator.nbytes + 200_000
    assert 8 * 6400 * 6400 == 327_680_000  # GPT-2 XL: the sum of outer products alone


def test_theta_stays_unit_norm_and_a_gradient_step_raises_the_correlation():
    rng = np.random.default_rng(3)
    whitened = rng.standard_normal((600, 8))
    simulation = whitened @ rng.standard_normal(8) + rng.standard_normal(600)
    theta = random_directions(1, 8, seed=4)[0]
    before = correlation(simulation, whitened @ theta)
    one = ascend(theta, whitened, simulation, steps=1)
    many = ascend(theta, whitened, simulation, steps=50)
    assert np.linalg.norm(one) == pytest.approx(1.0) and np.linalg.norm(many) == pytest.approx(1.0)
    assert correlation(simulation, whitened @ one) > before
    assert correlation(simulation, whitened @ many) > correlation(simulation, whitened @ one)


def test_the_ascent_steps_even_where_the_caller_turned_gradients_off():
    rng = np.random.default_rng(3)
    whitened = rng.standard_normal((200, 8))
    simulation = whitened @ rng.standard_normal(8)
    theta = random_directions(1, 8, seed=4)[0]
    with torch.inference_mode():
        moved = ascend(theta, whitened, simulation, steps=5)
    assert correlation(simulation, whitened @ moved) > correlation(simulation, whitened @ theta)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at most 16"):
        random_directions(17, 16, seed=0)
    with pytest.raises(ValueError, match="at most 4"):
        direction_projection(np.eye(4), np.eye(5, 4))
    with pytest.raises(ValueError, match="non-finite entries"):
        inverse_sqrt(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="no variance"):
        inverse_sqrt(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="singular.*at least 11 tokens"):
        inverse_sqrt(np.eye(10), n_tokens=10)
    with pytest.raises(ValueError, match="square"):
        inverse_sqrt(np.ones((2, 3)))
    with pytest.raises(ValueError, match="not symmetric"):
        inverse_sqrt(np.array([[1.0, 0.5], [0.0, 1.0]]))
    accumulator = CovarianceAccumulator(4)
    with pytest.raises(ValueError, match="layer width 4"):
        accumulator.add(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="1 non-finite"):
        accumulator.add(np.array([[0.0, 1.0, np.inf, 2.0]]))
    assert accumulator.count == 0
    with pytest.raises(ValueError, match="at least 2"):
        accumulator.covariance()
    with pytest.raises(ValueError, match="norm 2"):
        ascend(np.array([2.0, 0.0]), np.ones((3, 2)), np.arange(3.0), steps=1)
    with pytest.raises(ValueError, match="constant"):
        ascend(np.array([1.0, 0.0]), np.eye(3, 2), np.ones(3), steps=1)


def planted_layer(n_tokens: int, vocab: int, width: int, seed: int):
    """Gaussian activations of ``width`` - 1 dimensions plus one that is an exact function of the token id,
    mixed by a random invertible matrix; returns tokens, activations and the planted θ."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, n_tokens)
    token_value = rng.normal(0.0, 1.0, vocab)
    hidden = np.column_stack([rng.standard_normal((n_tokens, width - 1)), token_value[tokens]])
    mixing = rng.standard_normal((width, width))
    activations = hidden @ mixing
    whitening = inverse_sqrt(np.cov(activations, rowvar=False), n_tokens=n_tokens)
    # a W θ = hidden Mᵀ... : the θ whose virtual neuron is the last hidden coordinate
    planted = np.linalg.solve(whitening.matrix, np.linalg.solve(mixing, np.eye(width)[-1]))
    return tokens, activations, whitening, planted / np.linalg.norm(planted)


def test_the_ascent_with_a_lookup_table_finds_a_planted_token_direction():
    width, vocab = 16, 30
    tokens, activations, whitening, planted = planted_layer(6000, vocab, width, seed=5)
    explain_rows, scoring_rows = np.arange(0, 4000), np.arange(4000, 6000)

    def explain(thetas: np.ndarray) -> list[Explained]:
        virtual = virtual_neurons(activations[explain_rows], direction_projection(whitening, thetas))
        counts = np.bincount(tokens[explain_rows], minlength=vocab)
        out = []
        for k in range(len(thetas)):  # the lookup table: the per-token mean of the virtual neuron
            table = np.bincount(tokens[explain_rows], weights=virtual[:, k], minlength=vocab) / counts
            out.append(Explained(table, tokens[scoring_rows], activations[scoring_rows], table[tokens[scoring_rows]]))
        return out

    def resimulate(table: np.ndarray, explained: Explained) -> np.ndarray:
        return table[explained.scoring]

    start = random_directions(3, width, seed=6)
    history = coordinate_ascent(start, whitening, explain, resimulate, rounds=6, steps_per_round=150)
    assert len(history) == 3 * 6
    first = [h for h in history if h.round == 0]
    last = [h for h in history if h.round == 5]
    for h in history:
        assert np.linalg.norm(h.theta) == pytest.approx(1.0)
    for h0, h in zip(first, last, strict=True):
        assert abs(h0.theta @ planted) < 0.9
        assert abs(h.theta @ planted) > 0.99  # either sign is the same virtual neuron
        assert h.correlation > 0.99
        assert h.correlation > h0.correlation
    frame = rounds_frame(history, layer=3, describe=lambda table: f"table of {len(table)} tokens")
    assert frame.height == 18
    assert frame.schema == polars_schema(DirectionRounds, frame.columns)
    assert frame["theta"].list.len().to_list() == [width] * 18


def test_an_earlier_explanation_is_kept_when_it_scores_higher_on_the_new_direction():
    rng = np.random.default_rng(7)
    activations = rng.standard_normal((300, 4))
    whitening = inverse_sqrt(np.cov(activations, rowvar=False))
    good = activations @ whitening.matrix @ np.array([1.0, 0.0, 0.0, 0.0])
    explanations = iter(["good", "noise", "noise"])

    def explain(thetas: np.ndarray) -> list[Explained]:
        name = next(explanations)
        simulation = good if name == "good" else rng.standard_normal(300)
        return [Explained(name, None, activations, simulation)]

    def resimulate(name: str, explained: Explained) -> np.ndarray:
        return good if name == "good" else rng.standard_normal(300)

    history = coordinate_ascent(np.array([[0.6, 0.8, 0.0, 0.0]]), whitening, explain, resimulate, 3, 20)
    assert [h.explanation for h in history] == ["good", "good", "good"]
    assert [h.reused_from_round for h in history] == [None, 0, 0]
    assert history[1].correlation > history[0].correlation
