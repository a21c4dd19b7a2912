"""The LLM layer against the real llama.cpp server: sampled replays and context shortening."""

import openai
import pytest
from test_simulation_modes import word_tokens

from neuron_assets.explainers.explainer import explain
from neuron_assets.llm.client import CachingClient
from neuron_assets.llm.llama_server import PACKAGED_MODEL_ALIAS, LocalLlamaServer, packaged_gguf_path
from neuron_assets.llm.response_cache import ResponseCache
from neuron_assets.prompts.templates import Record

pytestmark = pytest.mark.slow


def records(n, length):
    return [Record(tokens[:length], [float(i % 5) for i in range(length)]) for tokens in word_tokens(n)]


def caching_client(server, cache_dir):
    raw = openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0)
    return CachingClient(raw, "local llama.cpp", ResponseCache(cache_dir))


def test_sampled_explanations_at_temperature_one_replay_exactly_from_the_cache(tmp_path):
    shown = records(2, 12)
    with LocalLlamaServer(packaged_gguf_path(), PACKAGED_MODEL_ALIAS) as server:
        first = caching_client(server, tmp_path)
        sampled = explain(first, PACKAGED_MODEL_ALIAS, shown, n_samples=3, temperature=1.0, max_tokens=20)
        again = caching_client(server, tmp_path)
        replayed = explain(again, PACKAGED_MODEL_ALIAS, shown, n_samples=3, temperature=1.0, max_tokens=20)
    assert first.stats.calls >= 3
    assert again.stats.calls == 0 and again.stats.cache_hits == first.stats.calls
    assert [e.raw_reply for e in replayed] == [e.raw_reply for e in sampled]
    assert len({e.raw_reply for e in sampled}) > 1  # three samples, not one answer three times


def test_a_context_too_small_for_the_prompt_is_met_by_deliberate_shortening(tmp_path):
    """llama.cpp with a 512-token context refuses the full explainer prompt (about 900 tokens here)."""
    shown = records(4, 24)
    with LocalLlamaServer(packaged_gguf_path(), PACKAGED_MODEL_ALIAS, n_ctx=512) as server:
        client = caching_client(server, tmp_path)
        (explanation,) = explain(client, PACKAGED_MODEL_ALIAS, shown, temperature=0.0, max_tokens=20)
        calls = client.stats.calls
        (again,) = explain(
            caching_client(server, tmp_path), PACKAGED_MODEL_ALIAS, shown, temperature=0.0, max_tokens=20
        )
    assert explanation.shortening is not None and explanation.shortening.startswith("dropped 2 of 2 few-shot neurons")
    assert explanation.n_shown < len(shown)
    assert calls == 2 + len(shown) - explanation.n_shown + 1  # each refused size once, then the one that fits
    assert again == explanation


def test_an_all_at_once_simulation_replays_exactly_from_a_row_a_tenth_the_size_of_the_response(tmp_path):
    import json

    from neuron_assets.simulators.modes.all_at_once import simulate

    (tokens,) = word_tokens(1)
    with LocalLlamaServer(packaged_gguf_path(), PACKAGED_MODEL_ALIAS) as server:
        first = caching_client(server, tmp_path)
        original = first.completions.create
        responses = []

        def remembering(**request):
            response = original(**request)
            responses.append(response)
            return response

        first.completions.create = remembering
        simulated = simulate(first, PACKAGED_MODEL_ALIAS, "words about animals", tokens[:16], distribution_shift=0)
        again = caching_client(server, tmp_path)
        replayed = simulate(again, PACKAGED_MODEL_ALIAS, "words about animals", tokens[:16], distribution_shift=0)
    assert again.stats.calls == 0 and replayed == simulated
    (response,) = responses
    assert first.stats.cached_bytes * 10 < len(json.dumps(response))
