"""The local LLM server's memory is bounded, watched, and named when it was the cause of a death.

llama-cpp-python's prompt cache counted each saved state as llama.cpp's few MB, while every
state also carried a copy of the logits of all its positions (about 300 MB for a simulation
prompt); a 19-puzzle run grew the server to 24 GB and the kernel killed it.
"""

import os
import re
import signal
import urllib.error
import urllib.request

import numpy as np
import pytest
from test_llama_build import FakeServer

from neuron_assets.llm.llama_server import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_MEMORY_LIMIT,
    PACKAGED_MODEL_ALIAS,
    LLMServerExited,
    LocalLlamaServer,
    packaged_gguf_path,
    settings_from_environment,
)
from neuron_assets.llm.process_memory import GIB, MemoryFigures, describe_memory_at_death, parse_size
from neuron_assets.llm.prompt_cache import BoundedRAMCache, state_bytes

MIB = 1 << 20
# Loading with n_ctx 2,048 needs 0.75 GiB of data (VmData); a 1,460-token echo then needs 0.13 GiB
# more, and saving its state in a prompt cache (its logits, and llama.cpp's, which hold them too)
# 0.3 GiB beyond that (measured 2026-12-03).
OOM_TEST_LIMIT = 1 * GIB


class FakeState:
    """What the cache sees of a ``LlamaState``: llama.cpp's state size, the logits, the token ids."""

    def __init__(self, n_tokens, n_vocab=1024, llama_state_size=4096):
        self.scores = np.zeros((n_tokens, n_vocab), dtype=np.float32)
        self.input_ids = np.arange(n_tokens, dtype=np.intc)
        self.llama_state_size = llama_state_size


def test_a_cached_state_counts_its_logits_and_token_ids_not_only_llama_cpp_state():
    state = FakeState(n_tokens=100)
    assert state_bytes(state) == 4096 + 100 * 1024 * 4 + 100 * 4


def test_the_prompt_cache_evicts_the_least_recently_used_states_by_the_bytes_they_hold():
    one = state_bytes(FakeState(256))  # about 1 MiB
    cache = BoundedRAMCache(capacity_bytes=3 * one)
    for first in range(5):
        cache[(first, 1, 2)] = FakeState(256)
        assert cache.cache_size <= 3 * one
    assert list(cache.cache_state) == [(2, 1, 2), (3, 1, 2), (4, 1, 2)]
    cache[(2, 1, 2, 9)]  # a lookup by longest prefix makes (2, 1, 2) the most recently used
    cache[(5,)] = FakeState(256)
    assert list(cache.cache_state) == [(4, 1, 2), (2, 1, 2), (5,)]


def test_a_state_larger_than_the_whole_cache_is_not_kept_and_evicts_nothing():
    cache = BoundedRAMCache(capacity_bytes=2 * MIB)
    cache[(1,)] = FakeState(256)
    cache[(2,)] = FakeState(1024)  # 4 MiB of logits
    assert list(cache.cache_state) == [(1,)]


def test_sizes_are_read_with_binary_units_and_a_bad_one_is_named():
    assert parse_size("6GiB") == 6 * GIB
    assert parse_size("512M") == 512 * MIB
    assert parse_size("1.5g") == int(1.5 * GIB)
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError, match="'lots' is not a size"):
        parse_size("lots")


def test_the_local_server_settings_come_from_the_environment_with_bounded_defaults(monkeypatch):
    monkeypatch.delenv("NEURON_ASSETS_LOCAL_LLM_CACHE", raising=False)
    monkeypatch.delenv("NEURON_ASSETS_LOCAL_LLM_MEMORY_LIMIT", raising=False)
    assert settings_from_environment() == (DEFAULT_CACHE_BYTES, DEFAULT_MEMORY_LIMIT)
    monkeypatch.setenv("NEURON_ASSETS_LOCAL_LLM_CACHE", "off")
    monkeypatch.setenv("NEURON_ASSETS_LOCAL_LLM_MEMORY_LIMIT", "8GiB")
    assert settings_from_environment() == (None, 8 * GIB)
    monkeypatch.setenv("NEURON_ASSETS_LOCAL_LLM_CACHE", "big")
    with pytest.raises(ValueError, match="NEURON_ASSETS_LOCAL_LLM_CACHE: 'big' is not a size"):
        settings_from_environment()


def test_a_death_near_the_memory_limit_is_put_down_to_memory_and_one_far_from_it_is_not():
    near = describe_memory_at_death(-signal.SIGKILL, MemoryFigures(last=int(3.6 * GIB), peak=int(3.7 * GIB)), 4 * GIB)
    assert "resident memory was 3.60 GiB at the last sample (peak 3.70 GiB; its own limit 4.00 GiB" in near
    assert "most likely out of memory (it was near its own limit)" in near
    far = describe_memory_at_death(-signal.SIGKILL, MemoryFigures(last=GIB // 2, peak=GIB // 2), 4 * GIB)
    assert "0.50 GiB" in far and "out of memory" not in far


def test_a_sigkill_while_the_host_was_full_is_put_down_to_the_hosts_memory():
    from neuron_assets.llm.process_memory import host_memory

    total, _ = host_memory()
    figures = MemoryFigures(last=GIB, peak=GIB, host_in_use=int(0.95 * total))
    assert "it was near the host's memory" in describe_memory_at_death(-signal.SIGKILL, figures, None)
    assert "out of memory" not in describe_memory_at_death(-signal.SIGSEGV, figures, None)


def completion(server):
    request = urllib.request.Request(
        f"{server.base_url}/completions", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def test_the_server_runs_under_its_own_memory_limit_as_the_out_of_memory_killers_first_choice():
    server = FakeServer(portable="grow")
    server.memory_limit = 600 * MIB
    with server:
        with open(f"/proc/{server.pid}/oom_score_adj") as adj:
            assert adj.read().strip() == "1000"
        statuses = []
        for _ in range(8):
            try:
                statuses.append(completion(server))
            except urllib.error.HTTPError as error:
                statuses.append(error.code)
        assert statuses[:3] == [200, 200, 200] and 500 in statuses  # an allocation past the limit fails
        server.check_alive()  # the limit stopped an allocation, not the server


def test_a_server_killed_near_its_limit_is_reported_with_its_memory_as_out_of_memory():
    server = FakeServer(portable="grow")
    server.memory_limit = 750 * MIB
    with server:
        for _ in range(6):  # 600 MiB kept, and the interpreter: over 80% of the limit
            completion(server)
        server.check_alive()  # alive: its memory is sampled
        os.kill(server.pid, signal.SIGKILL)
        with pytest.raises(LLMServerExited) as death:
            server.check_alive()
    message = str(death.value)
    assert re.search(r"exited \(signal 9, SIGKILL\); its resident memory was 0\.[67]\d GiB at the last sample", message)
    assert "its own limit 0.73 GiB; the host has" in message
    assert "most likely out of memory (it was near its own limit)" in message


@pytest.mark.slow
def test_the_real_servers_memory_stays_flat_over_a_hundred_distinct_prompts():
    """100 distinct echoed prompts of about 60 tokens (12 MB of logits each) against a 64 MiB
    cache: the cache is full after about five, so memory after the last call stays within
    400 MiB of memory after the first thirty (a cache that did not count the logits would grow
    by 0.84 GB between the two; the allocator's arenas alone have moved it by 114 MiB)."""
    words = [f" w{i % 97}x{i // 97}" for i in range(4000)]
    with LocalLlamaServer(packaged_gguf_path(), PACKAGED_MODEL_ALIAS, n_ctx=512, cache_bytes=64 * MIB) as server:
        url = f"{server.base_url}/completions"
        from neuron_assets.benches.llm import ECHOED, post

        after = {}
        for call in range(1, 101):
            prompt = f"Prompt {call}:" + "".join(words[call * 17 % 3900 :][:15])
            post(url, {**ECHOED, "prompt": prompt})
            if call in (30, 100):
                after[call] = server.memory.sample().last
    assert after[100] - after[30] < 400 * MIB, {k: v / MIB for k, v in after.items()}


@pytest.mark.slow
def test_a_request_past_the_real_servers_memory_limit_is_answered_as_out_of_memory_and_the_server_lives():
    """Under a limit that loading fits but a long echoed prompt's state (about 1,460 positions x
    49,152 x 4 bytes of logits, copied into a prompt cache) does not, the request fails as out
    of memory with the server's figures, through the client the pipeline uses; the server
    serves on."""
    import openai

    from neuron_assets.llm.client import CachingClient, RetryPolicy
    from neuron_assets.llm.errors import LLMError

    long_prompt = "".join(f" w{i % 89}x{i // 89}" for i in range(300))
    with LocalLlamaServer(
        packaged_gguf_path(), PACKAGED_MODEL_ALIAS, n_ctx=2048, cache_bytes=2 * GIB, memory_limit=OOM_TEST_LIMIT
    ) as server:
        raw = openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=120)
        client = CachingClient(raw, server.base_url, None, RetryPolicy(max_attempts=2, base_delay_s=0.01))
        ask = {"model": PACKAGED_MODEL_ALIAS, "max_tokens": 1, "echo": True, "logprobs": 20}
        with pytest.raises(
            LLMError, match="ran out of memory on each of 2 attempts: out of memory in the local"
        ) as oom:
            client.completions.create(prompt=long_prompt, **ask)
        assert re.search(r"resident \d+\.\d\d GiB, its data limit 1\.\d\d GiB", str(oom.value)), str(oom.value)
        server.check_alive()
        assert client.completions.create(prompt="A short prompt.", **ask)["choices"][0]["logprobs"]["tokens"]
