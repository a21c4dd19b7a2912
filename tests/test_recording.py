import polars as pl
import pytest
import torch

from neuron_assets.recording.recorder import (
    NeuronSelection,
    RecordingSettings,
    random_sample,
    record,
    record_tables,
)

N_EXCERPTS, LENGTH, D_MLP = 37, 6, 10


@pytest.fixture
def corpus():
    """Excerpts with known activations for two layers; half the excerpts in each pool."""
    generator = torch.Generator().manual_seed(0)
    activations = {layer: torch.randn(N_EXCERPTS, LENGTH, D_MLP, generator=generator) for layer in (1, 3)}
    excerpts = pl.DataFrame(
        {
            "excerpt_id": list(range(100, 100 + N_EXCERPTS)),
            "pool": ["scoring" if i % 2 else "explanation" for i in range(N_EXCERPTS)],
            "token_ids": [[i] * LENGTH for i in range(N_EXCERPTS)],
        }
    )
    return excerpts, activations


def fake_model(activations, calls):
    """Stands in for the subject model: looks activations up by the excerpt's first token id."""

    def run(tokens, hooks, stop_at_layer):
        calls.append(stop_at_layer)
        rows = tokens[:, 0]
        for layer, hook in hooks.items():
            hook(activations[layer][rows])

    return run


def test_streaming_top_k_equals_brute_force_top_k(corpus):
    excerpts, activations = corpus
    neurons = {1: [0, 4, 9], 3: [2]}
    calls = []
    recorders = record(
        fake_model(activations, calls), excerpts, neurons, [101, 103], start_token_id=None, batch_size=5, top_k=4
    )
    for layer, selected in neurons.items():
        for pool in ("explanation", "scoring"):
            rows = torch.as_tensor((excerpts["pool"] == pool).to_numpy())
            ids = torch.tensor(excerpts["excerpt_id"].to_list())[rows]
            acts = activations[layer][rows][:, :, selected]  # [e, t, n]
            best = acts.amax(1).topk(4, dim=0)
            values, top_ids, top_acts = recorders[layer, "positive"].top(pool)
            assert torch.equal(top_ids, ids[best.indices])
            assert torch.allclose(values, best.values)
            for column in range(len(selected)):
                expected = acts[best.indices[:, column], :, column]
                assert torch.allclose(top_acts[:, column], expected)


@pytest.mark.parametrize("fold", ["numba", "torch"])
def test_excerpts_rank_by_maximum_then_lower_id_whatever_order_they_come_in(corpus, fold):
    excerpts, activations = corpus
    tied = {1: activations[1].clone()}
    tied[1][1::4, :, 2] = 10.0  # every other scoring excerpt ties for neuron 2's first places
    shuffled = excerpts.sample(fraction=1.0, shuffle=True, seed=1)
    tops = []
    for frame in (excerpts, shuffled):
        recorders = record(
            fake_model(tied, []), frame, {1: [0, 2]}, [], start_token_id=None, batch_size=6, top_k=5, fold=fold
        )
        tops.append(recorders[1, "positive"].top("scoring"))
    for in_order, out_of_order in zip(*tops, strict=True):
        assert torch.equal(in_order, out_of_order)
    values, ids, _ = tops[0]
    assert (values[:, 1] == 10.0).all() and ids[:, 1].tolist() == [101, 105, 109, 113, 117]


def test_a_pool_smaller_than_k_keeps_only_real_excerpts(corpus):
    excerpts, activations = corpus
    recorders = record(fake_model(activations, []), excerpts.head(5), {1: [0]}, [], start_token_id=None, top_k=4)
    records, _, _ = record_tables(recorders, RecordingSettings())
    by_pool = dict(records.filter(pl.col("kind") == "top").group_by("pool").len().iter_rows())
    assert by_pool == {"explanation": 3, "scoring": 2}
    assert set(records["excerpt_id"]) <= set(excerpts.head(5)["excerpt_id"])


def test_one_forward_pass_per_batch_serves_every_layer_and_stops_after_the_deepest(corpus):
    excerpts, activations = corpus
    calls = []
    record(fake_model(activations, calls), excerpts, {1: [0], 3: [0]}, [101], start_token_id=None, batch_size=10)
    assert calls == [4, 4, 4, 4]  # ceil(37 / 10) passes, none per layer


def test_statistics_match_the_whole_corpus(corpus):
    excerpts, activations = corpus
    recorders = record(fake_model(activations, []), excerpts, {1: [0, 5]}, [101], start_token_id=None, batch_size=7)
    stats = recorders[1, "positive"].stats()
    flat = activations[1][:, :, [0, 5]].reshape(-1, 2).double()
    assert stats["mean"].to_list() == pytest.approx(flat.mean(0).tolist())
    assert stats["variance"].to_list() == pytest.approx(flat.var(0, unbiased=False).tolist())
    assert stats["max"].to_list() == pytest.approx(flat.max(0).values.tolist())
    assert stats["frac_firing"].to_list() == pytest.approx((flat > 0).double().mean(0).tolist())
    assert stats["n_tokens"].to_list() == [N_EXCERPTS * LENGTH] * 2


def test_bos_position_is_fed_to_the_model_but_not_recorded(corpus):
    excerpts, activations = corpus
    seen = []

    def run(tokens, hooks, stop_at_layer):
        seen.append(tokens.shape[1])
        padded = torch.cat([torch.full((len(tokens), 1, D_MLP), 99.0), activations[1][tokens[:, 1]]], dim=1)
        hooks[1](padded)

    recorders = record(run, excerpts, {1: [0]}, [101], start_token_id=7, batch_size=50)
    assert seen == [LENGTH + 1]
    assert recorders[1, "positive"].state().maximum.item() < 99.0


def test_record_tables_hold_top_random_and_quantile_rows(corpus):
    excerpts, activations = corpus
    random_ids = random_sample(excerpts, 10, seed=0)
    recorders = record(fake_model(activations, []), excerpts, {1: [0, 1]}, random_ids, start_token_id=None, top_k=3)
    records, stats, _ = record_tables(recorders, RecordingSettings(per_bin=2))
    counts = dict(records.group_by("kind").len().iter_rows())
    assert counts["top"] == 2 * 2 * 3 and counts["random"] == 2 * 10 and counts["quantile"] > 0
    random_rows = records.filter(pl.col("kind") == "random", pl.col("neuron") == 1).sort("rank")
    expected = activations[1][torch.as_tensor(random_ids) - 100][:, :, 1]
    assert torch.allclose(torch.tensor(random_rows["activations"].to_list(), dtype=torch.float64), expected.double())
    assert set(records.filter(pl.col("kind") == "random")["pool"]) == {"scoring"}
    assert len(stats) == 2


def test_the_token_lookup_table_is_each_tokens_mean_activation_over_the_explanation_pool(corpus):
    excerpts, activations = corpus
    generator = torch.Generator().manual_seed(1)
    token_ids = torch.randint(0, 5, (N_EXCERPTS, LENGTH), generator=generator)
    # the first token still names the excerpt for the fake model; tokens 1.. vary
    token_ids[:, 0] = torch.arange(N_EXCERPTS) + 10
    excerpts = excerpts.with_columns(token_ids=pl.Series(token_ids.tolist()))

    def run(tokens, hooks, stop_at_layer):
        hooks[1](activations[1][tokens[:, 0] - 10])

    recorders = record(run, excerpts, {1: [2, 6]}, [101], start_token_id=None, batch_size=4)
    _, _, lookup = record_tables(recorders, RecordingSettings())
    explanation_rows = torch.as_tensor((excerpts["pool"] == "explanation").to_numpy())
    ids = token_ids[explanation_rows].reshape(-1)
    for neuron in (2, 6):
        acts = activations[1][explanation_rows][:, :, neuron].reshape(-1).double()
        table = lookup.filter(pl.col("neuron") == neuron).sort("token_id")
        expected_ids = sorted(set(ids.tolist()))
        assert table["token_id"].to_list() == expected_ids  # only tokens of the explanation pool
        for token_id, count, mean in table.select("token_id", "count", "mean_activation").iter_rows():
            chosen = acts[ids == token_id]
            assert count == len(chosen) and mean == pytest.approx(chosen.mean().item())


def test_random_sample_comes_from_the_scoring_pool_only(corpus):
    excerpts, _ = corpus
    ids = random_sample(excerpts, 5, seed=3)
    pools = excerpts.filter(pl.col("excerpt_id").is_in(ids))["pool"]
    assert set(pools) == {"scoring"} and len(ids) == 5
    with pytest.raises(ValueError, match="scoring pool has 18 excerpts"):
        random_sample(excerpts, 100, seed=0)


def test_the_random_samples_order_is_random_so_its_first_ranks_spread_over_a_topic_sorted_pool():
    """Scoring takes the first random ranks and calibration the next: on a pool in corpus
    order (here sorted by topic), each must be a uniform sample, not its first part."""
    pool = pl.DataFrame({"excerpt_id": list(range(400)), "pool": ["scoring"] * 400})
    first_five, next_three = [], []
    for seed in range(100):
        ids = random_sample(pool, 20, seed)
        assert len(set(ids)) == 20 and ids == random_sample(pool, 20, seed)  # distinct, and seeded
        first_five += ids[:5]
        next_three += ids[5:8]
    # a uniform sample's mean position is 0.5 of the pool; the first 5 of 20 sorted ids average about 0.14
    assert abs(sum(first_five) / len(first_five) / 400 - 0.5) < 0.05
    assert abs(sum(next_three) / len(next_three) / 400 - 0.5) < 0.06


def test_neuron_selection_modes():
    assert NeuronSelection("all").resolve(4, layer=0) == [0, 1, 2, 3]
    assert NeuronSelection("first", n=2).resolve(4, layer=0) == [0, 1]
    assert NeuronSelection("list", indices=(3, 1, 3)).resolve(4, layer=0) == [1, 3]
    chosen = NeuronSelection("random", n=3, seed=5).resolve(100, layer=2)
    assert chosen == NeuronSelection("random", n=3, seed=5).resolve(100, layer=2)
    assert len(set(chosen)) == 3 and all(0 <= n < 100 for n in chosen)


@pytest.mark.parametrize(
    "selection, message",
    [
        (NeuronSelection("list", indices=(4,)), "layer 0 has neurons 0..3"),
        (NeuronSelection("first", n=9), "layer 0 has 4"),
        (NeuronSelection("best"), "not one of"),
    ],
)
def test_bad_neuron_selections_name_the_problem(selection, message):
    with pytest.raises(ValueError, match=message):
        selection.resolve(4, layer=0)


def test_the_negative_side_records_the_most_negative_excerpts_negated_in_the_same_pass(corpus):
    excerpts, activations = corpus
    calls = []
    recorders = record(
        fake_model(activations, calls),
        excerpts,
        {1: [0, 4]},
        [101],
        start_token_id=None,
        batch_size=5,
        top_k=3,
        polarity="both",
    )
    assert len(calls) == len(range(0, N_EXCERPTS, 5))  # one pass serves both polarities
    rows = torch.as_tensor((excerpts["pool"] == "explanation").to_numpy())
    ids = torch.tensor(excerpts["excerpt_id"].to_list())[rows]
    acts = activations[1][rows][:, :, [0, 4]]
    lowest = acts.amin(1).topk(3, dim=0, largest=False)
    values, top_ids, top_acts = recorders[1, "negative"].top("explanation")
    assert torch.equal(top_ids, ids[lowest.indices])
    assert torch.allclose(values, -lowest.values)
    assert torch.allclose(top_acts[:, 1], -acts[lowest.indices[:, 1], :, 1])
    records, stats, lookup = record_tables(recorders, RecordingSettings())
    assert set(records["polarity"]) == set(stats["polarity"]) == set(lookup["polarity"]) == {"positive", "negative"}
    by_side = dict(stats.filter(pl.col("neuron") == 0).select("polarity", "max").rows())
    assert by_side["negative"] == pytest.approx(-float(activations[1][:, :, 0].min()))


def test_an_unknown_polarity_is_refused_by_name(corpus):
    excerpts, activations = corpus
    with pytest.raises(ValueError, match="polarity 'up' is not one of"):
        record(fake_model(activations, []), excerpts, {1: [0]}, [101], start_token_id=None, polarity="up")


def test_neuron_ranges_for_threads_cover_the_layer_on_cache_line_bounds():
    from neuron_assets.recording.fold import ranges

    assert ranges(1536, 2) == [(0, 768), (768, 1536)]
    assert ranges(1000, 3) == [(0, 336), (336, 672), (672, 1000)]
    assert ranges(300, 4) == [(0, 300)]  # under 256 neurons a range: one thread
    assert ranges(10, 2) == [(0, 10)]


def test_a_batch_folded_by_several_threads_gives_exactly_what_one_thread_gives(corpus):
    excerpts, _ = corpus
    generator = torch.Generator().manual_seed(2)
    wide = torch.randn(N_EXCERPTS, LENGTH, 600, generator=generator)
    # the first token names the excerpt for the fake model; the rest vary, for the token sums
    excerpts = excerpts.with_columns(token_ids=pl.Series([[i] + [i % 4] * (LENGTH - 1) for i in range(N_EXCERPTS)]))

    def run(tokens, hooks, stop_at_layer):
        hooks[1](wide[tokens[:, 0]])

    threads = torch.get_num_threads()
    results = []
    try:
        for n_threads in (1, 3):
            torch.set_num_threads(n_threads)
            recorders = record(run, excerpts, {1: range(600)}, [101, 103], start_token_id=None, batch_size=8, top_k=3)
            results.append(record_tables(recorders, RecordingSettings()))
    finally:
        torch.set_num_threads(threads)
    for one, several in zip(*results, strict=True):
        assert one.equals(several)
    records = results[0][0].filter(pl.col("kind") == "top", pl.col("neuron") == 599, pl.col("pool") == "scoring")
    best = wide[1::2, :, 599].amax(1).topk(3)
    assert records["max_activation"].to_list() == pytest.approx(best.values.tolist())
