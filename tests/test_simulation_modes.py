"""Simulator modes against the real llama.cpp server serving the packaged model."""

import numpy as np
import openai
import polars as pl
import pytest

from neuron_assets.llm.client import CachingClient
from neuron_assets.llm.llama_server import PACKAGED_MODEL_ALIAS, LocalLlamaServer, packaged_gguf_path
from neuron_assets.prompts.templates import SimulatorPrompt, simulator_prompt
from neuron_assets.sampling.corpus import load_documents
from neuron_assets.sampling.excerpts import make_excerpts
from neuron_assets.simulators.expected_value import expected_value
from neuron_assets.simulators.modes.all_at_once import simulate
from neuron_assets.simulators.modes.base import SimulationError
from neuron_assets.simulators.modes.chat_logprobs import simulate_chat
from neuron_assets.simulators.modes.json_array import simulate_json
from neuron_assets.simulators.modes.one_at_a_time import simulate_one_at_a_time
from neuron_assets.simulators.probes import resolve_mode

pytestmark = pytest.mark.slow


def word_tokens(n_excerpts):
    """Excerpts cut with a whitespace tokenizer: the simulator only needs token strings."""
    words = {}

    def tokenize(texts):
        return [[words.setdefault(w, len(words)) for w in t.split()] for t in texts]

    def text(ids):
        inverse = {i: w for w, i in words.items()}
        return [" " + inverse[i] for i in ids]

    excerpts = make_excerpts(load_documents("lee"), tokenize, text, "words", length=24)
    return excerpts.filter(pl.col("pool") == "scoring").head(n_excerpts)["tokens"].to_list()


@pytest.fixture(scope="module")
def client():
    with LocalLlamaServer(packaged_gguf_path(), PACKAGED_MODEL_ALIAS) as server:
        raw = openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0)
        yield CachingClient(raw, server.base_url, None)


def next_token_values(client, prompt):
    """The reference read: one completions call per placeholder, on the prompt cut there."""
    values = []
    for offset in prompt.placeholder_offsets:
        response = client.completions.create(
            model=PACKAGED_MODEL_ALIAS, prompt=prompt.text[:offset], max_tokens=1, temperature=0.0, logprobs=20
        )
        values.append(expected_value(response["choices"][0]["logprobs"]["top_logprobs"][0]))
    return values


def test_the_echo_read_at_each_placeholder_is_the_next_token_distribution_there(client):
    """For a causal model, the echo at a placeholder and a call cut there read the same distribution.

    They are not bit-identical: llama.cpp evaluates the prompt in one batch for one and
    token by token against its cache for the other, and a digit near the top-20 cut-off
    can enter or leave the list. How far apart depends on the CPU's kernels: a median
    difference of 0.053 on an AVX2-only AMD EPYC, under 0.05 on an AVX-512 Xeon; a wrong
    shift is about 1.0 off (the next test).
    """
    pairs = []
    for tokens in word_tokens(2):
        together = simulate(client, PACKAGED_MODEL_ALIAS, "numbers and dates", tokens, distribution_shift=0)
        separately = next_token_values(client, simulator_prompt("numbers and dates", tokens))
        pairs += [(a, b) for a, b in zip(together.expected, separately, strict=True) if a is not None and b is not None]
    a, b = np.array(pairs).T
    assert len(pairs) >= 24
    assert np.corrcoef(a, b)[0, 1] > 0.95
    assert np.median(np.abs(a - b)) < 0.15


def test_a_wrong_distribution_shift_breaks_that_agreement(client):
    tokens = word_tokens(1)[0]
    shifted = simulate(client, PACKAGED_MODEL_ALIAS, "numbers and dates", tokens, distribution_shift=-1)
    reference = next_token_values(client, simulator_prompt("numbers and dates", tokens))
    pairs = [(a, b) for a, b in zip(shifted.expected, reference, strict=True) if a is not None and b is not None]
    a, b = np.array(pairs).T
    assert np.median(np.abs(a - b)) > 0.3  # measured: ~1.0, against 0.05 with the right shift


def test_one_at_a_time_asks_the_study_question_once_per_token_on_the_real_server(client):
    """The study's format: a chat call per token, the text up to it, one number read.

    A different prompt from all_at_once, so agreement is measured (make bench-modes), not
    assumed; pinned here: every token gets a value in 0..10 from its own call."""
    tokens = word_tokens(1)[0][:8]
    before = client.stats.calls
    result = simulate_one_at_a_time(
        client, PACKAGED_MODEL_ALIAS, "numbers and dates", tokens, ten_handling="second_read"
    )
    assert client.stats.calls - before == len(tokens)
    assert len(result.expected) == len(tokens)
    assert all(v is not None and 0.0 <= v <= 10.0 for v in result.expected)
    assert result.prompt_tokens > 0


def test_json_mode_returns_one_slot_per_token_and_counts_what_did_not_line_up(client):
    tokens = word_tokens(1)[0]
    result = simulate_json(client, PACKAGED_MODEL_ALIAS, "numbers and dates", tokens)
    assert len(result.expected) == len(tokens)
    assert all(v is None or 0.0 <= v <= 10.0 for v in result.expected)


def test_the_local_server_holds_a_json_reply_to_one_integer_per_token(client):
    """Held to the schema, the packaged model answers a value for every token of every excerpt,
    where unconstrained it writes arrays of other lengths, or words."""
    schema_client = CachingClient(client.pool, client.backend, None, json_schema_format="json_object")
    for tokens in word_tokens(4):
        result = simulate_json(schema_client, PACKAGED_MODEL_ALIAS, "words about government", tokens)
        assert result.n_misaligned == 0 and result.n_unsimulated == 0
        assert all(v == int(v) and 0.0 <= v <= 10.0 for v in result.expected)


def test_the_classifier_scorers_read_every_answer_and_every_likelihood_from_the_local_server(client):
    """Detection and fuzzing with the answers held to a schema and graded from top log-probabilities,
    and surprisal from echoed prompt log-probabilities: every example answered, every excerpt's
    tokens read, on the packaged model (what the answers are worth is the puzzles' business)."""
    from neuron_assets.scorers.detection import score_detection
    from neuron_assets.scorers.examples import EXAMPLE_SCHEMA
    from neuron_assets.scorers.fuzzing import score_fuzzing
    from neuron_assets.scorers.surprisal import score_surprisal

    schema_client = CachingClient(client.pool, client.backend, None, json_schema_format="json_object")
    excerpts = word_tokens(4)
    examples = pl.DataFrame(
        [
            (
                i,
                "top" if i < 2 else "non_activating",
                i < 2,
                tokens,
                [10.0 * (i < 2 and j == 3) for j in range(len(tokens))],
            )
            for i, tokens in enumerate(excerpts)
        ],
        schema=EXAMPLE_SCHEMA,
        orient="row",
    )
    for score in (score_detection, score_fuzzing):
        asked, metrics = score(schema_client, PACKAGED_MODEL_ALIAS, "words about politics", examples, use_logprobs=True)
        assert metrics.n_unanswered == 0 and asked["answer"].is_in([0, 1]).all()
        assert asked["probability"].is_not_null().all() and metrics.auroc is not None
    scored, surprisal = score_surprisal(schema_client, PACKAGED_MODEL_ALIAS, "words about politics", examples)
    assert (scored["n_tokens"] > 0).all() and scored["gain"].is_finite().all() and surprisal.auroc is not None


def test_generated_token_logprobs_are_the_distributions_that_predicted_each_token(client):
    """The server's numpy path for generated tokens: token k's entry equals a one-token call's."""
    prompt = "The days of the week are Monday, Tuesday,"
    run = client.completions.create(
        model=PACKAGED_MODEL_ALIAS, prompt=prompt, max_tokens=4, temperature=0.0, logprobs=5
    )
    logprobs = run["choices"][0]["logprobs"]
    assert "".join(logprobs["tokens"]) == run["choices"][0]["text"]
    for k in range(3):
        step = client.completions.create(
            model=PACKAGED_MODEL_ALIAS,
            prompt=prompt + "".join(logprobs["tokens"][:k]),
            max_tokens=1,
            temperature=0.0,
            logprobs=5,
        )
        alone = step["choices"][0]["logprobs"]["top_logprobs"][0]
        within = logprobs["top_logprobs"][k]
        best = max(alone, key=alone.get)
        assert best == max(within, key=within.get)
        assert abs(alone[best] - within[best]) < 0.05


def test_auto_mode_picks_prompt_logprobs_on_the_local_server(client):
    assert resolve_mode(client, PACKAGED_MODEL_ALIAS, "auto") == "all_at_once"


def test_chat_mode_reads_one_slot_per_token_and_counts_the_lines_that_did_not_line_up(client):
    """SmolLM2-135M does not follow the listing format (measured: on the first excerpt it
    writes no value at all, which is an error; on the second it values 1 token of 24 and
    leaves 28 lines misaligned), so most tokens stay unsimulated; pinned: none is
    zero-filled, the misalignment is counted, and the call reports its prompt size."""
    first, second = word_tokens(2)
    with pytest.raises(SimulationError, match="no activation could be read for any of the 24 tokens"):
        simulate_chat(client, PACKAGED_MODEL_ALIAS, "numbers and dates", first)
    result = simulate_chat(client, PACKAGED_MODEL_ALIAS, "numbers and dates", second)
    assert len(result.expected) == len(second)
    assert all(v is None or 0.0 <= v <= 10.0 for v in result.expected)
    assert result.n_misaligned > 0
    assert result.prompt_tokens > 0


def test_the_probe_finds_that_smollm2_writes_ten_as_one_then_zero(client):
    from neuron_assets.simulators.probes import probe_ten_handling

    assert probe_ten_handling(client, PACKAGED_MODEL_ALIAS, "all_at_once") == "top_nine"
    assert probe_ten_handling(client, PACKAGED_MODEL_ALIAS, "json") == "written"


def test_the_alignment_probe_passes_on_the_packaged_model_and_reads_what_a_direct_query_reads(client):
    """Every placeholder of a real all-at-once prompt begins one of SmolLM2's tokens, the probe finds
    the wrapper's shift (0), and at a sample of placeholders of a full prompt (few-shot neurons
    included) the value read from the echo is the one a next-token query on the prompt cut there
    reads (up to llama.cpp's batch-against-cache differences, see the first test of this file)."""
    from neuron_assets.simulators.probes import probe_alignment, probe_ten_handling

    ten_handling = probe_ten_handling(client, PACKAGED_MODEL_ALIAS, "all_at_once")
    shift = probe_alignment(client, PACKAGED_MODEL_ALIAS, ten_handling)
    assert shift == 0
    tokens = word_tokens(1)[0]
    read = simulate(client, PACKAGED_MODEL_ALIAS, "numbers and dates", tokens, distribution_shift=shift).expected
    prompt = simulator_prompt("numbers and dates", tokens)
    sample = [0, len(tokens) // 2, len(tokens) - 1]
    direct = next_token_values(client, SimulatorPrompt(prompt.text, [prompt.placeholder_offsets[n] for n in sample]))
    # batch against cache: up to 0.20 apart on an AVX2-only host; a misread placeholder is about 1 off
    assert [read[n] for n in sample] == pytest.approx(direct, abs=0.3)


def forced(value):
    """Forty listing lines that all say ``value``, then a placeholder: the model repeats it."""
    return "".join(f"word{i}\t{value}\n" for i in range(40)) + "word40\t"


def next_distribution(client, text):
    response = client.completions.create(
        model=PACKAGED_MODEL_ALIAS, prompt=text, max_tokens=1, temperature=0.0, logprobs=20
    )
    return response["choices"][0]["logprobs"]["top_logprobs"][0]


def test_a_forced_always_ten_simulation_reads_close_to_ten_not_one(client):
    """Forced to say 10, SmolLM2 writes "1": read as a digit that is 1, the old bug. On the
    0..9 scale the probe chose, forced to say the top value, it reads as 10."""
    naive = expected_value(next_distribution(client, forced(10)))
    assert naive < 2.0
    on_the_scale = expected_value(next_distribution(client, forced(9)), top=9)
    assert on_the_scale > 9.0


def test_the_top_nine_scale_reads_every_token_of_a_real_excerpt_in_one_call(client):
    tokens = word_tokens(1)[0]
    before = client.stats.calls
    result = simulate(client, PACKAGED_MODEL_ALIAS, "numbers", tokens, distribution_shift=0, ten_handling="top_nine")
    assert client.stats.calls - before == 1
    valued = [v for v in result.expected if v is not None]
    assert len(valued) > len(tokens) // 2 and all(0.0 <= v <= 10.0 for v in valued)


def test_tokens_the_real_server_left_unsimulated_score_as_zero_and_are_counted(client):
    """SmolLM2 leaves most chat_logprobs tokens without a value: they count as 0, never dropped."""
    from neuron_assets.scorers.scoring import score

    tokens = word_tokens(2)[1]  # the excerpt where SmolLM2 writes at least one value
    result = simulate_chat(client, PACKAGED_MODEL_ALIAS, "numbers and dates", tokens)
    true = [float(i % 3) for i in range(len(tokens))]
    scored = score([result.expected], [true])
    assert scored.n_unsimulated == result.n_unsimulated > 0
    assert scored.n_tokens == len(tokens)  # every token scored, the unsimulated ones included
    filled = np.array([0.0 if v is None else v for v in result.expected])
    if filled.std() == 0:
        assert "simulated activations are constant" in scored.undefined_reason
    else:
        assert scored.correlation == pytest.approx(np.corrcoef(filled, true)[0, 1])
