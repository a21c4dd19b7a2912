"""Known answers end to end: a neuron whose activation is an exact function of the token, through the Dagster assets.

The subject model is the hand-set tiny GPT-2 of ``handset_gpt2`` (2 layers, width 16, MLP
width 8, the packaged SmolLM2 tokenizer): its layer-0 neuron ``NEURON`` is exactly ``FIRING``
(GELU(10) = 10) on ``WORDS`` and 0 elsewhere, a function of the token alone.

With that neuron, every score has a known value:

- the token baselines predict from the token alone, which is all the neuron depends on. The
  weight-based one runs the layer's own ``ln_2`` and MLP on the embedding, which is exactly
  the recorded computation here, so it is 1 up to float rounding (the study's product of
  embedding, norm gain and input weights, without LayerNorm's division, would be off by the
  per-token scale only, and the construction makes that scale the same for all tokens). The
  lookup table is the mean over the explanation pool: exact for every token seen there;
  a scoring token never seen there gets the neuron's mean (about 1 of 10), hence >= 0.99, not 1;
- a scripted simulator that writes 10 exactly on the tokens the explanation names and 0
  elsewhere scores 1 on both scoring sets, and its calibration, fitted on the held-out
  calibration excerpts, maps 10 to 10, so its explained variance is 1 as well;
- one that writes seeded random integers is independent of the truth: its correlation over
  n pooled tokens has standard deviation about 1/sqrt(n), so |score| < 4/sqrt(n);
- one that writes a constant has no correlation: the score is NULL with a reason naming
  the constant simulation.

The three simulators are three variants of one subject model, materialized one after
another through the same assets (recording once), with the response cache off: their
requests are identical, only the scripted answers differ.
"""

import json
import random
import re
import zlib

import dagster as dg
import duckdb
import pytest
import torch
from handset_gpt2 import FIRING, build_handset_gpt2

from neuron_assets.defs.definitions import build_definitions
from neuron_assets.defs.experiments import Experiment
from neuron_assets.demo import UP_TO_SCORES, materialize_layers
from neuron_assets.recording.subject_model import default_cache_dir, load_subject_model, materialize_packaged_model
from neuron_assets.settings import Settings
from neuron_assets.storage.store import ResultStore

pytestmark = pytest.mark.slow

WORDS = (" the", " of", " and")  # common in the Lee news corpus: every scoring set holds some
NEURON = 3
SIMULATORS = ("exact", "noise", "constant")  # the variants, one scripted simulator each
CONFIG = {
    "ops": {
        "activation_records": {"config": {"selection": "list", "neuron_indices": [NEURON], "batch_size": 32}},
        "simulations": {"config": {"mode": "json"}},
    }
}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(materialize_packaged_model(default_cache_dir()))


@pytest.fixture(scope="module")
def word_ids(tokenizer):
    ids = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in WORDS]
    assert all(len(i) == 1 for i in ids), ids  # each word is one token
    return [i[0] for i in ids]


@pytest.fixture(scope="module")
def subject_folder(tokenizer, word_ids, tmp_path_factory):
    """The hand-set GPT-2, saved as a Hugging Face folder (its path is the subject model's name)."""
    return build_handset_gpt2(tmp_path_factory.mktemp("subject") / "handset_gpt2", tokenizer, {NEURON: word_ids})


def test_the_neuron_is_a_function_of_the_token_alone(subject_folder, tokenizer, word_ids):
    """Without Dagster: the recorded activation fires at FIRING on the words and is 0 elsewhere,
    whatever the context and position (the same text forwards and reversed)."""
    subject = load_subject_model(str(subject_folder), device="cpu")
    text = "The cat sat on the mat, and then it left the house of the king and the queen of hearts."
    ids = [0, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    tokens = torch.tensor([ids, [0, *ids[:0:-1]]])
    recorded = {}
    subject.run_with_mlp_hooks(tokens, {0: lambda a: recorded.__setitem__(0, a[..., NEURON].double())}, 1)
    by_token = {}
    for row, activations in zip(tokens.tolist(), recorded[0].tolist(), strict=True):
        for token, activation in zip(row, activations, strict=True):
            by_token.setdefault(token, []).append(activation)
    assert set(word_ids) <= set(by_token)
    for token, values in by_token.items():
        expected = FIRING if token in word_ids else 0.0
        assert max(abs(v - expected) for v in values) < 1e-5, (tokenizer.decode([token]), values)


def named_tokens(explanation: str) -> set[str]:
    """The tokens an explanation names, each in double quotes."""
    return set(re.findall(r'"([^"]*)"', explanation))


class Script:
    """The scripted LLM. The explainer names the tokens its prompt shows with a non-zero value;
    the simulator is the one ``simulator`` names, switched between runs."""

    def __init__(self) -> None:
        self.simulator = SIMULATORS[0]

    def __call__(self, body: dict) -> str:
        question = body["messages"][-1]["content"]
        if question.startswith("Explanation: "):  # the json simulator: one excerpt's tokens
            explanation, listed = question.split("\n", 1)
            tokens = json.loads(listed.split("): ", 1)[1])
            if self.simulator == "exact":
                names = named_tokens(explanation)
                return json.dumps([10 if token in names else 0 for token in tokens])
            if self.simulator == "noise":
                rng = random.Random(zlib.crc32(listed.encode()))
                return json.dumps([rng.randint(0, 10) for _ in tokens])
            return json.dumps([5] * len(tokens))
        listing = question.split("<start>\n", 1)[1]  # the target neuron's listings (explanation or lookup table)
        shown = {line.rsplit("\t", 1)[0] for line in listing.splitlines() if re.search(r"\t[1-9]\d*$", line)}
        return "the tokens " + ", ".join(f'"{token}"' for token in sorted(shown))


@pytest.fixture(scope="module")
def results(subject_folder, tmp_path_factory):
    """The store after three runs of layer 0, one per scripted simulator (variant)."""
    from scripted_openai import ScriptedOpenAI

    data_dir = tmp_path_factory.mktemp("known") / "results"
    script = Script()
    with ScriptedOpenAI(script) as server, dg.DagsterInstance.ephemeral() as instance:
        settings = Settings(
            subject_models=(str(subject_folder),),
            data_dir=data_dir,
            llm_base_url=server.url,
            explainer_model="scripted",
            simulator_model="scripted",
            variants=SIMULATORS,
            device="cpu",
        )
        defs = build_definitions(settings, cache=False)  # the variants' requests are identical
        for i, simulator in enumerate(SIMULATORS):
            script.simulator = simulator
            groups = UP_TO_SCORES if i == 0 else ("explanation", "simulation", "scoring")
            experiment = Experiment(str(subject_folder), simulator)
            result = materialize_layers(defs, 0, 0, CONFIG, instance, groups, experiment)
            assert result.success, simulator
            assert all(check.passed for check in result.get_asset_check_evaluations()), simulator
    return ResultStore(data_dir)


def query(store, sql, *parameters):
    with duckdb.connect(str(store.database), read_only=True) as connection:
        return connection.execute(sql, list(parameters)).fetchall()


def test_the_recorded_activations_are_the_tokens_known_values(results, word_ids):
    rows = query(
        results,
        "SELECT token_id, min(activation), max(activation), count(*) FROM ("
        "SELECT unnest(r.activations) AS activation, unnest(e.token_ids) AS token_id "
        "FROM activation_records r JOIN excerpts e USING (excerpt_id)) GROUP BY token_id",
    )
    assert {token for token, *_ in rows} >= set(word_ids)
    for token, low, high, _ in rows:
        expected = FIRING if token in word_ids else 0.0
        assert abs(low - expected) < 1e-5 and abs(high - expected) < 1e-5, token
    assert query(results, "SELECT DISTINCT neuron FROM neuron_stats") == [(NEURON,)]


def test_the_explainer_named_exactly_the_firing_tokens(results):
    rows = query(results, "SELECT variant, method, explanation FROM explanations ORDER BY variant, method")
    assert [(v, m) for v, m, _ in rows] == [
        (v, m) for v in sorted(SIMULATORS) for m in ("explanation", "lookup_explanation")
    ]
    for *_, explanation in rows:
        assert named_tokens(explanation) == set(WORDS), explanation


def test_the_token_baselines_score_one(results):
    rows = query(
        results,
        "SELECT variant, lookup_table_score, weight_based_score FROM neuron_scores WHERE layer = 0 ORDER BY variant",
    )
    assert len(rows) == len(SIMULATORS)
    for _, lookup, weight_based in rows:
        print(f"lookup_table {lookup:.6f}, weight_based {weight_based:.9f}")
        assert lookup >= 0.99
        assert weight_based >= 1 - 1e-6
    for method in ("lookup_table", "weight_based"):
        (random_only,) = query(
            results,
            "SELECT min(random_only_score) FROM method_scores WHERE method = ?",
            method,
        )[0]
        assert random_only >= 0.99, method


def test_the_exact_simulator_scores_one_on_both_sets_with_explained_variance_one(results):
    rows = query(
        results,
        "SELECT method, top_and_random_score, random_only_score, top_and_random_explained_variance, "
        "random_only_explained_variance, calibration_slope, calibration_intercept FROM method_scores "
        "WHERE variant = 'exact' AND method IN ('explanation', 'lookup_explanation') ORDER BY method",
    )
    assert [r[0] for r in rows] == ["explanation", "lookup_explanation"]
    for method, top_and_random, random_only, ev_top_and_random, ev_random_only, slope, intercept in rows:
        print(f"{method}: {top_and_random:.6f} {random_only:.6f} ev {ev_top_and_random:.6f} {ev_random_only:.6f}")
        assert top_and_random >= 0.99 and random_only >= 0.99
        assert ev_top_and_random >= 0.98 and ev_random_only >= 0.98
        assert slope == pytest.approx(FIRING / 10, abs=1e-3) and abs(intercept) < 1e-3  # 10 maps onto 10


def test_a_noise_simulator_scores_near_zero(results):
    rows = query(
        results,
        "SELECT method, scoring_set, correlation, n_tokens FROM scores WHERE variant = 'noise' "
        "AND method IN ('explanation', 'lookup_explanation')",
    )
    assert len(rows) == 4
    for method, scoring_set, correlation, n_tokens in rows:
        print(f"{method} {scoring_set}: {correlation:.4f} over {n_tokens} tokens, bound {4 / n_tokens**0.5:.4f}")
        assert abs(correlation) < 4 / n_tokens**0.5, (method, scoring_set)


def test_a_constant_simulator_has_an_undefined_score_naming_the_constant_simulation(results):
    rows = query(
        results,
        "SELECT method, top_and_random_score, random_only_score, top_and_random_explained_variance, "
        "top_and_random_undefined_reason, random_only_undefined_reason FROM method_scores "
        "WHERE variant = 'constant' AND method IN ('explanation', 'lookup_explanation')",
    )
    assert len(rows) == 2
    for method, top_and_random, random_only, explained_variance, *reasons in rows:
        assert top_and_random is None and random_only is None and explained_variance is None, method
        for reason in reasons:
            assert "simulated activations are constant" in reason, reason
    (row,) = query(
        results,
        "SELECT top_and_random_score, top_and_random_undefined_reason, lookup_table_score FROM neuron_scores "
        "WHERE variant = 'constant'",
    )
    assert row[0] is None and "constant" in row[1] and row[2] >= 0.99  # the baselines stay defined
