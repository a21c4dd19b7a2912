"""The cost per neuron by scorer (``benches/scorer_cost.py``, printed first by ``make bench-llm``).

Its counts are the stand-in server's own, so they must equal what the client's ``CallStats``
counted and what the scorers' tables record for the same run; its printed ratios must follow
from them; and every scorer and simulator mode must read the stand-in's answers at the first
ask (no rejected reply, no retry), or the counts would include re-asks. Short excerpts (8
tokens) keep one-at-a-time's call per token cheap; the settings are otherwise the assets'.
"""

import math
import re

import pytest

from neuron_assets.benches import scorer_cost
from neuron_assets.benches.counting_server import PackagedTokenizer

LENGTH = 8


@pytest.fixture(scope="module")
def tokenizer():
    return PackagedTokenizer()


@pytest.fixture(scope="module")
def measured(tokenizer):
    return scorer_cost.measure(1, scorer_cost.WAYS, LENGTH, tokenizer)


@pytest.fixture(scope="module")
def pipeline(tokenizer):
    ways = ("json", "detection", "surprisal")
    return scorer_cost.measure(2, ways, LENGTH, tokenizer, pipeline_methods=True)


def test_the_counts_are_the_clients_and_the_tables(measured):
    _, costs = measured
    assert [cost.way for cost in costs] == list(scorer_cost.WAYS)
    for cost in costs:
        assert cost.calls == cost.stats.calls > 0, cost.way
        assert cost.prompt_tokens == cost.stats.prompt_tokens == cost.table_prompt_tokens > 0, cost.way
        assert cost.stats.cache_hits == 0


def test_each_scorer_reads_the_stand_ins_answers_at_the_first_ask(measured):
    setup, costs = measured
    d = setup.defaults
    simulated = d.n_top + d.n_random + d.n_calibration_top + d.n_calibration_random
    examples = d.classifier_top + 2 + d.classifier_non_activating  # one quantile excerpt per bin
    expected_calls = {
        "all_at_once": simulated,
        "json": simulated,
        "one_at_a_time": simulated * LENGTH,
        "detection": math.ceil(examples / d.batch_size),
        "fuzzing": math.ceil(examples / d.batch_size),
        "surprisal": 2 * examples,
    }
    assert setup.graded  # the classifiers' graded answers are read too, as the local server gives them
    for cost in costs:
        assert cost.stats.rejected_replies == 0, cost.way
        assert cost.stats.retries == 0, cost.way
        assert cost.items == (simulated if cost.way in scorer_cost.SIMULATION_MODES else examples)
        assert cost.calls == expected_calls[cost.way], cost.way


def test_the_printed_ratios_follow_from_the_counts(measured):
    setup, costs = measured
    printed = scorer_cost.report(setup, costs)
    by_way = {cost.way: cost for cost in costs}
    reference = by_way[scorer_cost.REFERENCE]
    names = {name: way for way, name in scorer_cost.WHAT.items()}
    rows = re.findall(r"^\| 0 \| ([^|]+) \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \|$", printed, re.MULTILINE)
    assert len(rows) == len(costs)
    for name, calls, tokens, calls_ratio, tokens_ratio in rows:
        cost = by_way[names[name]]
        assert int(calls.replace(",", "")) == cost.calls
        assert int(tokens.replace(",", "")) == cost.prompt_tokens
        assert calls_ratio == f"{cost.calls / reference.calls:.2f}"
        assert tokens_ratio == f"{cost.prompt_tokens / reference.prompt_tokens:.2f}"


def test_at_the_default_methods_only_surprisals_neutral_calls_come_from_the_cache(pipeline):
    setup, costs = pipeline
    assert sorted(set(setup.explanations["method"].to_list())) == ["control", "explanation", "lookup_explanation"]
    for _, explained in setup.explanations.group_by("neuron"):  # a control is another neuron's explanation
        assert explained["explanation"].n_unique() == 3
    batch_size = setup.defaults.batch_size
    for cost in costs:
        assert cost.calls == cost.stats.calls, cost.way
        assert cost.prompt_tokens == cost.stats.prompt_tokens, cost.way
        assert cost.stats.rejected_replies == cost.stats.retries == 0
        per_explanation = {
            "json": cost.items,
            "detection": math.ceil(cost.items / batch_size),
            "surprisal": 2 * cost.items,
        }[cost.way]
        # every explanation asks the neutral prefix of each example again: only its first ask is a call
        hits = 2 * cost.items if cost.way == "surprisal" else 0
        assert (cost.calls, cost.stats.cache_hits) == (3 * per_explanation - hits, hits), cost.way


def test_prompts_are_counted_with_the_packaged_chat_template(tokenizer):
    messages = [{"role": "system", "content": "Count me."}, {"role": "user", "content": "Hello there."}]
    rendered = tokenizer.formatter(messages=messages).prompt
    assert rendered.startswith("<|im_start|>system\nCount me.<|im_end|>") and rendered.endswith(
        "<|im_start|>assistant\n"
    )
    assert len(tokenizer.chat_ids(messages)) == len(tokenizer.completion_ids(rendered))
    text = "Activations:\n<start>\nthe\tunknown\n<end>\n"
    tokens, offsets = tokenizer.pieces(tokenizer.completion_ids(text))
    assert "".join(tokens) == text and offsets == [sum(map(len, tokens[:j])) for j in range(len(tokens))]
