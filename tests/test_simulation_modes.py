"""Simulator modes against the real llama.cpp server serving the packaged model."""

import numpy as np
import openai
import polars as pl
import pytest

from neuron_assets.corpus import load_documents
from neuron_assets.excerpts import make_excerpts
from neuron_assets.llama_server import PACKAGED_MODEL_ALIAS, LocalLlamaServer, packaged_gguf_path
from neuron_assets.llm_client import CachingClient
from neuron_assets.simulator import simulate, simulate_json, simulate_one_at_a_time

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
