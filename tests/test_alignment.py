"""The all-at-once simulator reads each placeholder's own distribution, or refuses: the alignment probe."""

import sqlite3

import openai
import pytest
from scripted_completions import ScriptedCompletions, next_token

from neuron_assets.defs.resources import LLMResource, ResultStoreResource
from neuron_assets.llm.client import CachingClient
from neuron_assets.llm.response_cache import ResponseCache
from neuron_assets.prompts.templates import simulator_prompt
from neuron_assets.simulators.expected_value import expected_value
from neuron_assets.simulators.modes.all_at_once import AlignmentError, placeholder_distributions, simulate
from neuron_assets.simulators.probes import check_shift, probe_alignment, probe_ten_handling


def caching_client(server, cache=None):
    raw = openai.OpenAI(base_url=server.url, api_key="not-needed", max_retries=0)
    return CachingClient(raw, server.url, cache)


def cached_rows(root):
    with sqlite3.connect(root / ResponseCache.FILE) as connection:
        return connection.execute("SELECT count(*) FROM responses").fetchone()[0]


def test_a_placeholder_inside_a_token_is_refused_never_read_from_the_token_that_contains_it():
    prompt = simulator_prompt("x", ["a"])
    (first,) = prompt.placeholder_offsets
    pieces = [prompt.text[: first - 1], "\tunknown", prompt.text[first + 7 :]]
    offsets = [0, first - 1, first + 7]
    with pytest.raises(AlignmentError, match=r"no echoed token of 'm' begins at placeholder 0 .*'\\tunknown'"):
        placeholder_distributions(prompt, offsets, [None, {"3": 0.0}, None], 0, model="m", tokens=pieces)


@pytest.mark.parametrize("shift", [0, -1])
def test_the_probe_finds_where_the_server_files_the_echoed_distributions(shift):
    with ScriptedCompletions(shift=shift) as server:
        assert probe_alignment(caching_client(server), "scripted") == shift


@pytest.mark.parametrize("shift", [0, -1])
def test_with_the_found_shift_each_value_read_is_the_direct_next_token_query_at_its_placeholder(shift):
    tokens = [" the", " cat", " sat", "."]
    with ScriptedCompletions(shift=shift) as server:
        client = caching_client(server)
        found = probe_alignment(client, "scripted")
        read = simulate(client, "scripted", "cats", tokens, distribution_shift=found).expected
        wrong = simulate(client, "scripted", "cats", tokens, distribution_shift=-1 - found).expected
    prompt = simulator_prompt("cats", tokens)
    direct = [expected_value(next_token(prompt.text[:offset])) for offset in prompt.placeholder_offsets]
    assert read == pytest.approx(direct)
    assert wrong != pytest.approx(direct)


def test_a_tokenizer_that_joins_the_tab_to_the_letters_after_it_is_refused_at_the_probe_and_nothing_cached(
    tmp_path,
):
    with ScriptedCompletions(join_tab=True) as server:
        client = caching_client(server, ResponseCache(tmp_path))
        assert probe_ten_handling(client, "scripted", "all_at_once") == "top_nine"
        before = cached_rows(tmp_path)
        with pytest.raises(
            AlignmentError, match=r"no echoed token of 'scripted' begins at placeholder 0.*'\\tunknown'"
        ):
            probe_alignment(client, "scripted", "top_nine")
        assert cached_rows(tmp_path) == before
        with pytest.raises(AlignmentError, match="begins at placeholder"):  # and an excerpt's read refuses it too
            simulate(client, "scripted", "cats", [" a"], distribution_shift=0)


def test_an_echo_filed_where_no_known_convention_puts_it_is_refused_naming_the_differences():
    with ScriptedCompletions(shift=-2) as server:
        with pytest.raises(AlignmentError, match=r"where no known convention puts them: .*shift 0: \[.*shift -1: \["):
            probe_alignment(caching_client(server), "scripted")


def test_a_hand_set_shift_the_probe_contradicts_is_refused_naming_both():
    assert check_shift(-1, None, "m") == -1
    assert check_shift(0, 0, "m") == 0
    with pytest.raises(AlignmentError, match="prompt_logprobs_shift is set to 0, but .* of 'm' at shift -1"):
        check_shift(-1, 0, "m")


def test_the_llm_resource_uses_the_found_shift_and_refuses_a_contradicting_one(tmp_path):
    with ScriptedCompletions(shift=-1) as server:

        def resource(**fields):
            return LLMResource(
                results=ResultStoreResource(data_dir=str(tmp_path)),
                base_url=server.url,
                explainer_model="scripted",
                simulator_model="scripted",
                **fields,
            )

        *_, mode, ten_handling, shift = resource().simulator("all_at_once")
        assert (mode, ten_handling, shift) == ("all_at_once", "top_nine", -1)
        assert resource(prompt_logprobs_shift=-1).simulator("all_at_once")[-1] == -1
        with pytest.raises(AlignmentError, match="set to 0, but the alignment probe found .* at shift -1"):
            resource(prompt_logprobs_shift=0).simulator("all_at_once")
        assert resource(prompt_logprobs_shift=0).simulator("json")[-1] == 0  # modes that read no echo ask nothing
