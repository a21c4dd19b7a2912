"""Simulator modes against the real llama.cpp server serving the packaged model."""

import numpy as np
import openai
import polars as pl
import pytest

from neuron_assets.corpus import load_documents
from neuron_assets.excerpts import make_excerpts
from neuron_assets.llama_server import PACKAGED_MODEL_ALIAS, LocalLlamaServer, packaged_gguf_path
from neuron_assets.llm_client import CachingClient
from neuron_assets.simulator import resolve_mode, simulate, simulate_chat, simulate_json, simulate_one_at_a_time

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


def test_one_at_a_time_agrees_with_all_at_once(client):
    """For a causal model both read the same distributions: a check on the echo alignment.

    They are not bit-identical: llama.cpp evaluates the prompt in one batch for one and
    token by token against its cache for the other, and a digit near the top-20 cut-off
    can enter or leave the list.
    """
    pairs = []
    for tokens in word_tokens(2):
        together = simulate(client, PACKAGED_MODEL_ALIAS, "numbers and dates", tokens, distribution_shift=0)
        separately = simulate_one_at_a_time(client, PACKAGED_MODEL_ALIAS, "numbers and dates", tokens)
        pairs += [(a, b) for a, b in zip(together.expected, separately.expected, strict=True) if a is not None and b is not None]
    a, b = np.array(pairs).T
    assert len(pairs) >= 24
    assert np.corrcoef(a, b)[0, 1] > 0.95
    assert np.median(np.abs(a - b)) < 0.05


def test_a_wrong_distribution_shift_breaks_that_agreement(client):
    tokens = word_tokens(1)[0]
    shifted = simulate(client, PACKAGED_MODEL_ALIAS, "numbers and dates", tokens, distribution_shift=-1)
    reference = simulate_one_at_a_time(client, PACKAGED_MODEL_ALIAS, "numbers and dates", tokens)
    pairs = [(a, b) for a, b in zip(shifted.expected, reference.expected, strict=True) if a is not None and b is not None]
    a, b = np.array(pairs).T
    assert np.median(np.abs(a - b)) > 0.2  # measured: ~1.0, against < 0.05 with the right shift


def test_json_mode_returns_one_slot_per_token_and_counts_what_did_not_line_up(client):
    tokens = word_tokens(1)[0]
    result = simulate_json(client, PACKAGED_MODEL_ALIAS, "numbers and dates", tokens)
    assert len(result.expected) == len(tokens)
    assert all(v is None or 0.0 <= v <= 10.0 for v in result.expected)


def test_generated_token_logprobs_are_the_distributions_that_predicted_each_token(client):
    """The server's numpy path for generated tokens: token k's entry equals a one-token call's."""
    prompt = "The days of the week are Monday, Tuesday,"
    run = client.completions.create(model=PACKAGED_MODEL_ALIAS, prompt=prompt, max_tokens=4, temperature=0.0, logprobs=5)
    logprobs = run["choices"][0]["logprobs"]
    assert "".join(logprobs["tokens"]) == run["choices"][0]["text"]
    for k in range(3):
        step = client.completions.create(
            model=PACKAGED_MODEL_ALIAS, prompt=prompt + "".join(logprobs["tokens"][:k]), max_tokens=1,
            temperature=0.0, logprobs=5,
        )  # fmt: skip
        alone = step["choices"][0]["logprobs"]["top_logprobs"][0]
        within = logprobs["top_logprobs"][k]
        best = max(alone, key=alone.get)
        assert best == max(within, key=within.get)
        assert abs(alone[best] - within[best]) < 0.05


def test_auto_mode_picks_prompt_logprobs_on_the_local_server(client):
    assert resolve_mode(client, PACKAGED_MODEL_ALIAS, "auto") == "all_at_once"


def test_chat_mode_reads_one_slot_per_token_and_counts_the_lines_that_did_not_line_up(client):
    """SmolLM2-135M does not follow the listing format (measured: it drops the values or
    merges lines), so most tokens stay unsimulated; pinned: none is zero-filled, the
    misalignment is counted, and the call reports its prompt size."""
    tokens = word_tokens(1)[0]
    result = simulate_chat(client, PACKAGED_MODEL_ALIAS, "numbers and dates", tokens)
    assert len(result.expected) == len(tokens)
    assert all(v is None or 0.0 <= v <= 10.0 for v in result.expected)
    assert result.n_misaligned > 0  # measured on this excerpt: 21 of 24 tokens
    assert result.prompt_tokens > 0
