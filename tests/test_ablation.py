"""The ablation score (method.md §5): Jensen–Shannon divergences, the perturbed pass and its mid-model start,
the score's two fixed points, bad input, and one run through Dagster.

The subject model is a tiny GPT-2 (2 layers, width 16, MLP width 24) over a 40-word vocabulary
with a word-level tokenizer, both built here offline; its weights are redrawn at a scale that
makes one neuron's activation move the next-token distribution measurably.
"""

import json
import math

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest
import torch

from neuron_assets.recording.subject_model import SubjectModelError, load_subject_model
from neuron_assets.scorers.ablation import (
    MEAN,
    NO_CALIBRATION,
    AblationError,
    ablation_divergences,
    ablation_score,
    ablation_scores,
    calibrated,
    jensen_shannon,
)

WORDS = (
    "the cat dog sat ran on a mat rug and then it left house of king queen red blue green big small "
    "old new tree river hill sun moon star day night rain snow wind fire stone bird fish"
).split()
START = "<|endoftext|>"
N_LAYERS, WIDTH, D_MLP = 2, 16, 24
WEIGHT_SCALE = 0.4


def save_tiny_gpt2(folder, seed=0):
    """A tiny random GPT-2 with a word-level tokenizer over ``WORDS`` (plus ``START``), saved as a model folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {START: 0, **{word: i + 1 for i, word in enumerate(WORDS)}}
    vocab["[UNK]"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=START, eos_token=START, unk_token="[UNK]", pad_token=START
    )
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=64,
        n_embd=WIDTH,
        n_layer=N_LAYERS,
        n_head=2,
        n_inner=D_MLP,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, WEIGHT_SCALE)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "tiny_gpt2")


@pytest.fixture(scope="module")
def subject(folder):
    return load_subject_model(str(folder), device="cpu")


def excerpt_ids(n, length=12, seed=1):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(1, len(WORDS) + 1, size=length)] for _ in range(n)]


def recorded(subject, token_ids, layer, neuron):
    """The neuron's real activations on each excerpt (after the start token), as recording stores them."""
    tokens = torch.tensor([[0, *ids] for ids in token_ids])
    captured = []
    subject.run_with_mlp_hooks(tokens, {layer: lambda a: captured.append(a[:, 1:, neuron].double())}, layer + 1)
    return [row.numpy() for row in captured[0]]


# --- Jensen–Shannon divergence


def test_jsd_matches_a_hand_computed_value():
    """p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4), KL(p||m) = 1/2 ln(4/3), KL(q||m) = ln(4/3),
    so JSD = (1/2)(1/2 ln(4/3) + ln(4/3)) = 3/4 ln(4/3)."""
    log_p = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    log_q = torch.log(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert float(jensen_shannon(log_p, log_q)[0]) == pytest.approx(0.75 * math.log(4 / 3), rel=1e-12)
    assert float(jensen_shannon(log_q, log_p)[0]) == pytest.approx(0.75 * math.log(4 / 3), rel=1e-12)


def test_jsd_is_zero_for_identical_and_ln2_for_disjoint_distributions():
    log_p = torch.log_softmax(torch.randn(5, 7), dim=-1)
    assert torch.equal(jensen_shannon(log_p, log_p), torch.zeros(5))
    disjoint = jensen_shannon(torch.log(torch.tensor([1.0, 0.0])), torch.log(torch.tensor([0.0, 1.0])))
    assert float(disjoint) == pytest.approx(math.log(2))


def test_the_score_is_one_minus_the_ratio_of_mean_divergences_and_undefined_without_a_mean_effect():
    assert ablation_score(np.array([0.1, 0.3]), np.array([0.4, 0.4])) == (pytest.approx(0.5), None)
    assert ablation_score(np.array([0.8, 0.8]), np.array([0.4, 0.4]))[0] == pytest.approx(-1.0)
    value, reason = ablation_score(np.array([0.0]), np.array([0.0]))
    assert value is None and "mean activation changes no next-token distribution" in reason


# --- the perturbed pass


def projection_inputs(subject, suffix, forward):
    """Per layer, the input of the Hugging Face module whose name ends with ``suffix`` (the MLP's output
    projection, inside the bridge's wrappers) during ``forward()``: what each layer's MLP writes out from."""
    blocks = subject.bridge.blocks
    projections = [
        next(m for name, m in blocks[i].named_modules() if name.endswith(suffix)) for i in range(len(blocks))
    ]
    seen = {}
    handles = [
        p.register_forward_pre_hook(lambda _m, args, i=i: seen.setdefault(i, args[0].detach().clone()))
        for i, p in enumerate(projections)
    ]
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def check_one_neuron_changed(subject, suffix, layer, neuron, tokens):
    """Neuron ``neuron`` of ``layer`` set to 3.0: the layer's output projection sees 3.0 in that column and
    every other column as in a plain pass (none of the ablation's hooks); every earlier layer's, unchanged."""
    clean = projection_inputs(subject, suffix, lambda: subject.logits_and_layer_input(tokens, layer))
    perturbed = projection_inputs(
        subject, suffix, lambda: subject.logits_with_neuron_set(tokens, layer, neuron, torch.full(tokens.shape, 3.0))
    )
    assert sorted(clean) == sorted(perturbed) == list(range(subject.n_layers))
    for earlier in range(layer):
        assert torch.equal(clean[earlier], perturbed[earlier])
    assert torch.all(perturbed[layer][..., neuron] == 3.0)
    others = [i for i in range(subject.d_mlp) if i != neuron]
    assert torch.equal(clean[layer][..., others], perturbed[layer][..., others])
    assert not torch.equal(clean[layer][..., neuron], perturbed[layer][..., neuron])


@pytest.mark.parametrize("layer", [0, 1])
def test_the_perturbation_changes_exactly_one_neuron_of_one_layer(subject, layer):
    tokens = torch.tensor([[0, *ids] for ids in excerpt_ids(3)])
    check_one_neuron_changed(subject, "c_proj._original_component", layer, 5, tokens)


def test_nan_keeps_the_real_activation_and_the_pass_equals_an_unperturbed_one(subject):
    tokens = torch.tensor([[0, *ids] for ids in excerpt_ids(2)])
    clean, _ = subject.logits_and_layer_input(tokens, 1)
    kept = subject.logits_with_neuron_set(tokens, 1, 4, torch.full(tokens.shape, float("nan")))
    assert torch.equal(clean, kept)


@pytest.mark.parametrize("layer", [0, 1])
def test_starting_mid_model_gives_the_distributions_of_a_full_perturbed_pass(subject, layer):
    tokens = torch.tensor([[0, *ids] for ids in excerpt_ids(4)])
    values = torch.linspace(-2.0, 2.0, tokens.numel()).reshape(tokens.shape)
    _, start = subject.logits_and_layer_input(tokens, layer)
    full = subject.logits_with_neuron_set(tokens, layer, 7, values)
    mid = subject.logits_with_neuron_set(tokens, layer, 7, values, start)
    torch.testing.assert_close(torch.log_softmax(mid, -1), torch.log_softmax(full, -1), rtol=0, atol=1e-5)
    # the model's block list is whole again afterwards
    assert len(subject.bridge.original_model.transformer.h) == N_LAYERS


def test_mid_model_and_full_ablation_passes_give_the_same_divergences(subject):
    ids = excerpt_ids(5)
    replacements = {"sim": [np.linspace(-1, 1, len(row)) for row in ids], MEAN: [np.full(len(row), 0.2) for row in ids]}
    mid = ablation_divergences(subject, 1, 3, ids, replacements, 0, batch_size=2, mid_model=True, check_start=True)
    full = ablation_divergences(subject, 1, 3, ids, replacements, 0, batch_size=3, mid_model=False)
    for key in replacements:
        for a, b in zip(mid[key], full[key], strict=True):
            assert a.shape == (len(ids[0]),)
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert all(row.max() > 0 for row in mid[MEAN])  # the neuron does move the distribution


@pytest.mark.slow
def test_on_the_packaged_gated_model_one_neuron_changes_and_a_mid_model_start_matches_a_full_pass():
    """SmolLM2 (a Llama: gated MLP, rotary positions) is the default subject model."""
    from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL

    smollm2 = load_subject_model(PACKAGED_SUBJECT_MODEL, device="cpu")
    tokens = torch.tensor([[0, *ids] for ids in excerpt_ids(2, length=16)]) * 97  # ids of the larger vocabulary
    for layer in (0, 14, smollm2.n_layers - 1):
        check_one_neuron_changed(smollm2, "down_proj._original_component", layer, 11, tokens)
        values = torch.linspace(-3.0, 3.0, tokens.numel()).reshape(tokens.shape)
        _, start = smollm2.logits_and_layer_input(tokens, layer)
        full = smollm2.logits_with_neuron_set(tokens, layer, 11, values)
        mid = smollm2.logits_with_neuron_set(tokens, layer, 11, values, start)
        torch.testing.assert_close(torch.log_softmax(mid, -1), torch.log_softmax(full, -1), rtol=0, atol=1e-5)


# --- the score's fixed points


@pytest.mark.parametrize("layer", [0, 1])
def test_the_true_activation_scores_exactly_one_and_the_mean_exactly_zero(subject, layer):
    neuron = 9
    ids = excerpt_ids(6, seed=layer + 2)
    true = recorded(subject, ids, layer, neuron)
    mean = float(np.mean(np.concatenate(true)))
    replacements = {
        "true": true,
        "mean_as_simulation": [np.full(len(r), mean) for r in ids],
        MEAN: [np.full(len(r), mean) for r in ids],
    }
    jsd = ablation_divergences(subject, layer, neuron, ids, replacements, 0, batch_size=4)
    pooled = {key: np.concatenate(rows) for key, rows in jsd.items()}
    assert pooled[MEAN].mean() > 0
    assert ablation_score(pooled["true"], pooled[MEAN]) == (1.0, None)
    assert ablation_score(pooled["mean_as_simulation"], pooled[MEAN]) == (0.0, None)


# --- the tables: every method, calibration, polarity, bad input


def tables(subject, layer=1, neuron=9, n_excerpts=6):
    """One neuron's stored tables, by hand: its recorded activations as scoring excerpts (4 top, 2 random),
    an explanation whose simulation is the truth on the neuron's scale (calibration 1, 0), a control whose
    simulation is constant (no calibration), and a lookup table predicting the mean."""
    ids = excerpt_ids(n_excerpts, seed=11)
    true = recorded(subject, ids, layer, neuron)
    mean = float(np.mean(np.concatenate(true)))
    kinds = ["top"] * (n_excerpts - 2) + ["random"] * 2
    side = {"layer": layer, "neuron": neuron, "polarity": "positive"}
    excerpts = pl.DataFrame({"excerpt_id": list(range(n_excerpts)), "token_ids": ids})
    scoring = pl.DataFrame(
        [{**side, "excerpt_id": i, "excerpt_kind": k, "activations": list(true[i])} for i, k in enumerate(kinds)]
    )
    methods = [("explanation", neuron, 1.0, 0.0), ("control", neuron + 1, None, None), ("lookup_table", None, 1.0, 0.0)]
    scores = pl.DataFrame(
        [
            {
                **side,
                "sample": 0,
                "method": m,
                "explanation_neuron": e,
                "scoring_set": s,
                "calibration_slope": slope,
                "calibration_intercept": intercept,
                "correlation": 0.5,
            }
            for m, e, slope, intercept in methods
            for s in ("top_and_random", "random_only")
        ],
        schema_overrides={
            "explanation_neuron": pl.Int64,
            "calibration_slope": pl.Float64,
            "calibration_intercept": pl.Float64,
        },
    )
    simulations = pl.DataFrame(
        [
            {**side, "sample": 0, "method": m, "explanation_neuron": e, "excerpt_id": i, "simulated": values}
            for i in range(n_excerpts)
            for m, e, values in (("explanation", neuron, list(true[i])), ("control", neuron + 1, [5.0] * len(ids[i])))
        ]
    )
    predictions = pl.DataFrame(
        [
            {**side, "method": "lookup_table", "excerpt_id": i, "predicted": [mean] * len(ids[i])}
            for i in range(n_excerpts)
        ]
    )
    stats = pl.DataFrame([{**side, "mean": mean}])
    return scores, simulations, predictions, scoring, excerpts, stats


def test_every_method_is_ablated_per_scoring_set_with_the_explanation_one_and_the_mean_predictor_zero(subject):
    frame = ablation_scores(subject, *tables(subject), start_token_id=0, batch_size=4)
    by = {(r["method"], r["scoring_set"]): r for r in frame.iter_rows(named=True)}
    assert set(by) == {
        (m, s) for m in ("explanation", "control", "lookup_table") for s in ("top_and_random", "random_only")
    }
    for scoring_set, n_tokens in (("top_and_random", 6 * 12), ("random_only", 2 * 12)):
        assert by[("explanation", scoring_set)]["ablation_score"] == 1.0
        assert by[("lookup_table", scoring_set)]["ablation_score"] == 0.0
        assert by[("explanation", scoring_set)]["n_tokens"] == n_tokens
        control = by[("control", scoring_set)]
        assert control["ablation_score"] is None and control["undefined_reason"] == NO_CALIBRATION
        assert by[("explanation", scoring_set)]["mean_jsd_mean"] > 0


def test_a_negative_side_is_put_back_on_the_recorded_scale(subject):
    """The negative side's activations (and so its simulations, calibrations and mean) are negated; the
    ablation negates them back, so the same neuron gets the same scores from either side."""
    scores, simulations, predictions, scoring, excerpts, stats = tables(subject)
    negative = pl.lit("negative")
    frame = ablation_scores(
        subject,
        pl.concat([scores, scores.with_columns(polarity=negative)]),
        pl.concat(
            [
                simulations,
                simulations.with_columns(polarity=negative, simulated=pl.col("simulated").list.eval(-pl.element())),
            ]
        ),
        pl.concat(
            [
                predictions,
                predictions.with_columns(polarity=negative, predicted=pl.col("predicted").list.eval(-pl.element())),
            ]
        ),
        pl.concat(
            [
                scoring,
                scoring.with_columns(polarity=negative, activations=pl.col("activations").list.eval(-pl.element())),
            ]
        ),
        excerpts,
        pl.concat([stats, stats.with_columns(polarity=negative, mean=-pl.col("mean"))]),
        start_token_id=0,
    )
    per_side = {
        p: frame.filter(pl.col("polarity") == p).sort("method", "scoring_set")["ablation_score"].to_list()
        for p in ("positive", "negative")
    }
    assert per_side["positive"] == per_side["negative"]
    assert set(frame["mean_activation"].to_list()) == {float(stats["mean"][0])}


def test_a_method_without_a_calibration_cannot_be_put_on_the_neurons_scale():
    with pytest.raises(AblationError, match=r"method 'control' .* has no calibration"):
        calibrated([1.0, 2.0], None, 1.0, "method 'control' sample 0 of layer 1 neuron 9 (positive)")
    assert calibrated([1.0, None], (2.0, 0.5), -1.0, "x").tolist() == [-2.5, -0.5]  # unsimulated: a simulated 0


def test_a_layer_not_recorded_is_refused_before_any_forward_pass(subject):
    scores, simulations, predictions, scoring, excerpts, stats = tables(subject)
    with pytest.raises(AblationError, match=r"layer\(s\) \[1\] have scores but were not recorded"):
        ablation_scores(
            subject,
            scores,
            simulations,
            predictions,
            scoring,
            excerpts,
            stats.with_columns(layer=pl.lit(0)),
            start_token_id=0,
        )
    with pytest.raises(SubjectModelError, match=r"layer\(s\) \[5\] outside"):
        ablation_divergences(subject, 5, 0, excerpt_ids(1), {MEAN: [np.zeros(12)]}, 0)


def test_a_method_or_scoring_set_not_scored_is_refused_by_name(subject):
    with pytest.raises(AblationError, match=r"method\(s\) \['weight_based'\] were not scored"):
        ablation_scores(subject, *tables(subject), start_token_id=0, methods=["explanation", "weight_based"])
    with pytest.raises(AblationError, match=r"scoring set\(s\) \['top_only'\]"):
        ablation_scores(subject, *tables(subject), start_token_id=0, scoring_sets=["top_only"])


def test_max_neurons_and_methods_narrow_what_is_ablated(subject):
    frame = ablation_scores(subject, *tables(subject), start_token_id=0, methods=["explanation"], max_neurons=1)
    assert frame["method"].unique().to_list() == ["explanation"] and len(frame) == 2


# --- through Dagster


def scripted_answer(body):
    """The explainer says 'words with an e'; the json simulator writes 10 on words with an 'e' in them."""
    question = body["messages"][-1]["content"]
    if question.startswith("Explanation: "):
        tokens = json.loads(question.split("): ", 1)[1])
        return json.dumps([10 if "e" in token else 0 for token in tokens])
    return "words with an e."


def test_one_dagster_run_ablates_every_scored_method_and_the_views_compare_it_with_correlation(folder, tmp_path):
    from scripted_openai import ScriptedOpenAI

    from neuron_assets.defs.definitions import build_definitions
    from neuron_assets.defs.experiments import Experiment
    from neuron_assets.demo import UP_TO_SCORES, materialize_layers
    from neuron_assets.settings import Settings
    from neuron_assets.storage.store import ResultStore

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    documents = [" ".join(rng.choice(WORDS, size=40)) for _ in range(24)]
    (corpus / "words.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in documents))
    config = {
        "ops": {
            "documents": {"config": {"source": str(corpus)}},
            "excerpts": {"config": {"length": 16}},
            "activation_records": {
                "config": {
                    "selection": "list",
                    "neuron_indices": [2, 5, 9],
                    "top_k": 4,
                    "n_random": 8,
                    "polarity": "both",
                }
            },
            "scoring_excerpts": {
                "config": {"n_top": 2, "n_random": 2, "n_calibration_top": 1, "n_calibration_random": 1}
            },
            "explanations": {"config": {"n_examples": 2, "lookup_tokens": 8}},
            "simulations": {"config": {"mode": "json"}},
            "ablation_scores": {"config": {"batch_size": 3, "max_neurons": 2}},
        }
    }
    data_dir = tmp_path / "results"
    with ScriptedOpenAI(scripted_answer) as server, dg.DagsterInstance.ephemeral() as instance:
        settings = Settings(
            subject_models=(str(folder),),
            data_dir=data_dir,
            llm_base_url=server.url,
            explainer_model="scripted",
            simulator_model="scripted",
            device="cpu",
        )
        defs = build_definitions(settings, cache=False)
        result = materialize_layers(defs, 0, 1, config, instance, (*UP_TO_SCORES, "ablation"), Experiment(str(folder)))
    assert result.success
    assert all(check.passed for check in result.get_asset_check_evaluations())
    store = ResultStore(data_dir)
    with duckdb.connect(str(store.database), read_only=True) as connection:
        scored = connection.execute(
            "SELECT DISTINCT layer, neuron, polarity, method FROM scores WHERE neuron IN (2, 5)"
        ).fetchall()
        ablated = connection.execute("SELECT DISTINCT layer, neuron, polarity, method FROM ablation_scores").fetchall()
        assert sorted(ablated) == sorted(scored)  # every method of the first 2 neurons of each layer, both sides
        assert {m for *_, m in ablated} >= {
            "explanation",
            "lookup_explanation",
            "control",
            "lookup_table",
            "weight_based",
        }
        layers = connection.execute(
            "SELECT layer, method, scoring_set, n_neurons, n_undefined, mean_ablation, ablation_ci_low, "
            "rank_correlation, polarity FROM ablation_layers ORDER BY ALL"
        ).fetchall()
        neurons = connection.execute("SELECT count(*) FROM ablation_neurons").fetchone()[0]
    assert {(layer, s) for layer, _, s, *_ in layers} == {
        (layer, s) for layer in (0, 1) for s in ("top_and_random", "random_only")
    }
    assert neurons == len({(layer, n, p, m) for layer, n, p, m in ablated}) * 2
    weight_based = [row for row in layers if row[1] == "weight_based"]
    assert len(weight_based) == 2 * 2 * 2  # layers x scoring sets x sides
    assert all(row[3] + row[4] == 2 for row in weight_based)  # 2 neurons a side, defined or not
    defined = [row for row in weight_based if row[3] == 2]
    assert defined and all(row[6] is not None and row[7] is not None for row in defined)  # interval, rank correlation
