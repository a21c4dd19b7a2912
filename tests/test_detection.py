"""The detection scorer: the LLM says, per excerpt, whether the explained neuron fires in it."""

import json
import random

import pytest
from classifier_fakes import (
    FakeOpenAI,
    asked_texts,
    chat_reply,
    fake_chat_client,
    graded_reply,
    synthetic_examples,
)

from neuron_assets.llm.client import CachingClient
from neuron_assets.scorers.answers import AnswerError, answers_schema, balanced_batches, parse_answers
from neuron_assets.scorers.detection import score_detection


def oracle(request):
    """Answers right: the synthetic neuron fires exactly on " cat"."""
    return chat_reply(json.dumps([int("cat" in text) for text in asked_texts(request)]))


def test_an_oracle_scores_balanced_accuracy_one():
    examples = synthetic_examples(6, 6)
    client = fake_chat_client(oracle)
    answers, metrics = score_detection(client, "m", "the word cat", examples)
    assert metrics.balanced_accuracy == 1.0
    assert metrics.precision == metrics.recall == metrics.f1 == 1.0
    assert metrics.auroc is None  # no log-probabilities asked
    assert (metrics.n_examples, metrics.n_activating, metrics.n_unanswered) == (12, 6, 0)
    assert answers.columns == [
        "excerpt_id",
        "example_kind",
        "activating",
        "answer",
        "probability",
        "batch",
        "prompt_tokens",
    ]
    assert answers["answer"].to_list() == [int(a) for a in examples["activating"]]


def test_one_call_per_batch_at_temperature_zero_in_batches_of_near_equal_size():
    client = fake_chat_client(oracle)
    answers, _ = score_detection(client, "m", "the word cat", synthetic_examples(4, 3), batch_size=3)
    assert answers["batch"].to_list() == [0, 0, 0, 1, 1, 2, 2]  # 3 + 2 + 2, never a lone example
    assert answers["prompt_tokens"].to_list() == [11] * 7  # each call's reported prompt, on each of its rows
    assert [len(asked_texts(call)) for call in client.calls] == [3, 2, 2]
    assert all(call["temperature"] == 0.0 for call in client.calls)
    assert all("response_format" not in call and "logprobs" not in call for call in client.calls)


def test_the_reply_is_held_to_n_integers_0_or_1_where_the_backend_takes_a_schema():
    client = fake_chat_client(oracle, json_schema_format="json_schema")
    score_detection(client, "m", "the word cat", synthetic_examples(4, 3), batch_size=4)
    formats = [call["response_format"] for call in client.calls]
    assert formats[0] == {"type": "json_schema", "json_schema": {"name": "answers", "schema": answers_schema(4)}}
    assert formats[1]["json_schema"]["schema"]["maxItems"] == 3
    assert answers_schema(2)["items"] == {"type": "integer", "enum": [0, 1]}


@pytest.mark.parametrize(
    ("n_rows", "batch_size", "lengths"),
    [(11, 5, [4, 4, 3]), (10, 5, [5, 5]), (6, 5, [3, 3]), (1, 5, [1]), (0, 5, []), (7, 1, [1] * 7)],
)
def test_rows_are_cut_into_the_fewest_batches_whose_sizes_differ_by_at_most_one(n_rows, batch_size, lengths):
    batches = balanced_batches(n_rows, batch_size)
    assert [length for _, length in batches] == lengths
    assert [start for start, _ in batches] == [sum(lengths[:i]) for i in range(len(lengths))]


def test_a_client_answering_at_random_scores_about_one_half():
    # 200 activating and 200 non-activating examples answered by a fair coin: the recall on each
    # class is Binomial(200, 1/2) / 200 with sd sqrt(0.25 / 200) = 0.035, and balanced accuracy,
    # their mean, has sd 0.035 / sqrt(2) = 0.025; 0.1 is four of those.
    coin = random.Random(0)

    def guess(request):
        return chat_reply(json.dumps([coin.randint(0, 1) for _ in asked_texts(request)]))

    _, metrics = score_detection(fake_chat_client(guess), "m", "cats", synthetic_examples(200, 200), batch_size=20)
    assert metrics.balanced_accuracy == pytest.approx(0.5, abs=0.1)


def planted_probability(text):
    """P("1") planted for an excerpt: 0.9 or 0.45 where the neuron fires (by the excerpt's number), else 0.3 or 0.05."""
    number = int(text.split(" w")[1].split()[0])
    if "cat" in text:
        return 0.9 if number % 4 == 0 else 0.45
    return 0.3 if number % 3 else 0.05


def test_planted_log_probabilities_rank_the_examples_and_give_auroc_one():
    # Some written answers are wrong (P("1") = 0.45 is written "0"), but every activating example's
    # probability is above every other one's, so the ranking is perfect.
    client = fake_chat_client(lambda request: graded_reply([planted_probability(t) for t in asked_texts(request)]))
    answers, metrics = score_detection(client, "m", "cats", synthetic_examples(4, 4), batch_size=3, use_logprobs=True)
    assert metrics.auroc == 1.0
    assert metrics.balanced_accuracy < 1.0
    assert all(call["logprobs"] is True and call["top_logprobs"] == 20 for call in client.calls)
    shown = [text for call in client.calls for text in asked_texts(call)]
    assert answers["probability"].to_list() == pytest.approx([planted_probability(t) for t in shown])
    assert answers["answer"].to_list() == [int(planted_probability(t) > 0.5) for t in shown]


def test_graded_answers_without_log_probabilities_in_the_reply_are_an_error():
    with pytest.raises(AnswerError, match="returned no log-probabilities for generated tokens"):
        score_detection(fake_chat_client(oracle), "m", "cats", synthetic_examples(2, 2), use_logprobs=True)


def test_an_element_that_is_not_0_or_1_leaves_its_example_unanswered_counted_as_no():
    answers, metrics = score_detection(
        fake_chat_client(lambda request: chat_reply("[1, 2]")), "m", "cats", synthetic_examples(1, 1), batch_size=2
    )
    assert answers["answer"].to_list() == [1, None]
    assert metrics.n_unanswered == 1
    assert metrics.balanced_accuracy == 1.0  # the unanswered non-activating example counts as a right "no"


def test_reading_answers_from_a_reply_with_words_around_the_array():
    assert parse_answers('Sure: [1, 0, "1"] done', 3) == [(1, 7), (0, 10), (1, 14)]
    with pytest.raises(AnswerError, match="has 2 answers for 3 examples"):
        parse_answers("[1, 0]", 3)
    with pytest.raises(AnswerError, match="no JSON array of answers"):
        parse_answers("yes, no, yes", 3)
    with pytest.raises(AnswerError, match="no element of the reply's JSON array is 0 or 1"):
        parse_answers('["yes", "no"]', 2)


def test_an_unreadable_reply_is_asked_again_through_the_real_client():
    raw = FakeOpenAI(["The first one does, the second not.", "[1, 0]"])
    client = CachingClient(raw, "fake", None)
    examples = synthetic_examples(1, 1)
    answers, _ = score_detection(client, "m", "cats", examples, batch_size=2)
    assert answers["answer"].to_list() == [1, 0]
    assert len(raw.requests) == 2
    assert client.stats.rejected_replies == 1


def test_a_reply_unreadable_every_time_fails_naming_the_problem():
    raw = FakeOpenAI(["[1]", "[1]"])
    with pytest.raises(AnswerError, match="has 1 answers for 2 examples"):
        score_detection(CachingClient(raw, "fake", None), "m", "cats", synthetic_examples(1, 1), batch_size=2)
    assert len(raw.requests) == 2
