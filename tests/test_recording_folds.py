"""The torch fold (what recording uses on a GPU) gives the numba fold's tables, run here on the CPU.

Top-k ids, values and per-token activations, the random sample's activations, minima,
maxima, firing counts and token counts are copies or comparisons of the same float32
values, so they must be equal bit for bit; both folds rank excerpts by maximum, then by
lower id, so ties are no exception. Running sums are not summed in the same order: the
numba kernel adds each batch in float32 and that into float64, the torch fold sums in
float64. Means, mean squares, variances and token means are held to rtol 1e-6 with atol
1e-6 (for means near zero), well above float32's rounding of a batch's partial sums
(about 1e-8 of a mean here) and below anything a float32 activation can tell apart.
"""

import numpy as np
import polars as pl
import pytest
import torch

from neuron_assets.recording.recorder import RecordingSettings, record, record_tables, resolve_fold

N_EXCERPTS, LENGTH, D_MLP, START = 37, 6, 12, 7
RTOL, ATOL = 1e-6, 1e-6


@pytest.fixture
def corpus():
    """37 excerpts, every third one in the scoring pool, tokens from a small vocabulary; the
    model's activations are random floats per excerpt, found by the excerpt's first token."""
    generator = torch.Generator().manual_seed(0)
    activations = {layer: torch.randn(N_EXCERPTS, LENGTH, D_MLP, generator=generator) for layer in (0, 2)}
    token_ids = torch.randint(0, 9, (N_EXCERPTS, LENGTH), generator=generator)
    token_ids[:, 0] = torch.arange(N_EXCERPTS) + 100  # names the excerpt for the fake model
    excerpts = pl.DataFrame(
        {
            "excerpt_id": list(range(1000, 1000 + N_EXCERPTS)),
            "pool": ["scoring" if i % 3 == 1 else "explanation" for i in range(N_EXCERPTS)],
            "token_ids": token_ids.tolist(),
        }
    )
    return excerpts, activations


def with_start_token(activations):
    """A fake subject model fed the start token first: its position holds 50, which must not be recorded."""

    def run(tokens, hooks, stop_at_layer):
        assert (tokens[:, 0] == START).all()
        for layer, hook in hooks.items():
            acts = activations[layer][tokens[:, 1] - 100]
            hook(torch.cat([torch.full((len(acts), 1, D_MLP), 50.0), acts], dim=1))

    return run


def both_folds(run, excerpts, **settings):
    return {fold: record(run, excerpts, start_token_id=START, fold=fold, **settings) for fold in ("numba", "torch")}


def assert_same_state(numba, torch_):
    """Equal where the folds copy or compare values; within RTOL/ATOL where they sum them."""
    a, b = numba.state(), torch_.state()
    assert a.n_tokens == b.n_tokens > 0
    for exact in ("random_acts", "minimum", "maximum", "firing", "token_counts", "n_tokens"):
        assert np.array_equal(getattr(a, exact), getattr(b, exact)), exact
    for pool in ("explanation", "scoring"):
        for held, again in zip(numba.top(pool), torch_.top(pool), strict=True):
            assert torch.equal(held, again), pool
    for summed in ("total", "total_sq"):  # as means over the tokens
        got, expected = getattr(b, summed) / b.n_tokens, getattr(a, summed) / a.n_tokens
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=summed)
    seen = a.token_counts > 0
    np.testing.assert_allclose(
        b.token_sums[seen] / b.token_counts[seen, None],
        a.token_sums[seen] / a.token_counts[seen, None],
        rtol=RTOL,
        atol=ATOL,
    )


def assert_same_tables(numba_tables, torch_tables):
    """Activation records equal; statistics and the lookup table equal but for their sums' columns."""
    (records, stats, lookup), (torch_records, torch_stats, torch_lookup) = numba_tables, torch_tables
    assert torch_records.equals(records)  # top, random and quantile rows: ids, ranks and activations
    summed = {"mean": (torch_stats, stats), "variance": (torch_stats, stats), "mean_activation": (torch_lookup, lookup)}
    assert torch_stats.drop("mean", "variance").equals(stats.drop("mean", "variance"))
    assert torch_lookup.drop("mean_activation").equals(lookup.drop("mean_activation"))
    for column, (got, expected) in summed.items():
        np.testing.assert_allclose(got[column], expected[column], rtol=RTOL, atol=ATOL, err_msg=column)


def test_the_torch_fold_gives_the_numba_folds_tables_for_both_polarities(corpus):
    excerpts, activations = corpus
    neurons = {0: [1, 4, 5, 11], 2: [0, 3]}  # neither is a prefix of the layer
    recorders = both_folds(
        with_start_token(activations),
        excerpts,
        neurons=neurons,
        random_excerpt_ids=[1001, 1004, 1013],
        batch_size=5,  # 8 batches, the last one short
        top_k=4,
        polarity="both",
    )
    assert {r.fold_used for r in recorders["numba"].values()} == {"numba"}
    assert {r.fold_used for r in recorders["torch"].values()} == {"torch"}
    for key, numba in recorders["numba"].items():
        assert_same_state(numba, recorders["torch"][key])
    assert recorders["torch"][0, "positive"].state().maximum.max() < 50.0  # the start token is not recorded

    settings = RecordingSettings(per_bin=2)
    assert_same_tables(record_tables(recorders["numba"], settings), record_tables(recorders["torch"], settings))


def test_a_pool_with_fewer_than_k_excerpts_leaves_the_same_empty_slots(corpus):
    excerpts, activations = corpus
    recorders = both_folds(
        with_start_token(activations), excerpts.head(5), neurons={0: [2, 3]}, random_excerpt_ids=[], top_k=4
    )
    numba, torch_ = recorders["numba"][0, "positive"], recorders["torch"][0, "positive"]
    assert_same_state(numba, torch_)
    values, ids, _ = torch_.top("scoring")  # 2 of the 5 excerpts are scoring excerpts
    assert (ids[:2] >= 0).all() and (ids[2:] == -1).all() and (values[2:] == float("-inf")).all()


def test_excerpts_tied_for_a_place_rank_by_lower_id_in_both_folds(corpus):
    excerpts, _ = corpus
    flat = torch.ones(N_EXCERPTS, LENGTH, D_MLP)  # every excerpt's maximum is 1.0 ...
    flat[30, 2] = 2.0  # ... but the 31st's (an explanation excerpt), which comes when the top 3 are full
    recorders = both_folds(with_start_token({0: flat}), excerpts, neurons={0: [0]}, random_excerpt_ids=[], top_k=3)
    for fold in ("numba", "torch"):
        _, ids, _ = recorders[fold][0, "positive"].top("explanation")
        assert ids[:, 0].tolist() == [1030, 1000, 1002], fold


class TinyModel(torch.nn.Module):
    """Two MLP layers over token embeddings: a subject model small enough for every test run.

    With no attention a token's activations do not depend on its context, so excerpts that
    share their strongest token tie: the folds' common ranking is exercised on real ties."""

    def __init__(self, vocabulary: int, width: int = 8, d_mlp: int = 24) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocabulary, width)
        self.up = torch.nn.ModuleList(torch.nn.Linear(width, d_mlp) for _ in range(2))
        self.down = torch.nn.ModuleList(torch.nn.Linear(d_mlp, width) for _ in range(2))

    def run_with_mlp_hooks(self, tokens, hooks, stop_at_layer):
        with torch.inference_mode():  # as the subject model runs: the activations are inference tensors
            hidden = self.embed(tokens)
            for layer in range(stop_at_layer):
                post = torch.nn.functional.gelu(self.up[layer](hidden))
                if layer in hooks:
                    hooks[layer](post)
                hidden = hidden + self.down[layer](post)


def test_recording_a_tiny_model_gives_the_same_tables_with_either_fold(corpus):
    excerpts, _ = corpus
    model = TinyModel(vocabulary=200)
    numba_tables, torch_tables = (
        record_tables(
            record(
                model.run_with_mlp_hooks,
                excerpts,
                {0: range(24), 1: [3, 17]},
                [1001, 1007],
                start_token_id=START,
                batch_size=8,
                top_k=3,
                polarity="both",
                fold=fold,
            ),
            RecordingSettings(),
        )
        for fold in ("numba", "torch")
    )
    assert_same_tables(numba_tables, torch_tables)


def test_auto_folds_with_numba_on_the_cpu_and_with_torch_on_any_other_device():
    assert resolve_fold("auto", "cpu") == "numba"
    assert resolve_fold("auto", "cuda:0") == "torch"
    assert resolve_fold("torch", "cpu") == "torch" and resolve_fold("numba", "cuda") == "numba"
    with pytest.raises(ValueError, match="fold 'gpu' is not one of"):
        resolve_fold("gpu", "cpu")


def test_an_unknown_fold_is_refused_before_the_model_runs(corpus):
    excerpts, activations = corpus
    with pytest.raises(ValueError, match="fold 'fast' is not one of"):
        record(with_start_token(activations), excerpts, {0: [0]}, [], start_token_id=START, fold="fast")
