"""The fuzzing scorer: the LLM says whether the marked tokens are the ones the explained neuron fires on."""

import json
import re

import polars as pl
import pytest
from classifier_fakes import asked_texts, chat_reply, fake_chat_client, graded_reply, synthetic_examples

from neuron_assets.scorers.fuzzing import activating_tokens, mark_examples, score_fuzzing


def marked_words(text):
    return re.findall(r"<<(.*?)>>", text)


def oracle(request):
    """Answers right: a marking is correct when it marks " cat" and nothing else."""
    return chat_reply(json.dumps([int(set(marked_words(t)) == {"cat"}) for t in asked_texts(request)]))


def test_the_truly_activating_tokens_are_the_strongest_above_the_threshold_at_most_k():
    activations = [0.0, 1.0, 5.0, 4.0, 3.0, 0.5, 2.6]
    # above 0.5 x 5 = 2.5: positions 2, 3, 4 and 6; the three strongest are 2, 3 and 4
    assert activating_tokens(activations, threshold=0.5, k=3) == [2, 3, 4]
    assert activating_tokens(activations, threshold=0.5, k=5) == [2, 3, 4, 6]
    assert activating_tokens([0.0, -1.0]) == []


def test_markings_are_correct_or_wrong_by_a_seeded_coin_and_wrong_marks_never_hit_activating_tokens():
    examples = synthetic_examples(40, 40)
    marked = mark_examples(examples, seed=3)
    assert marked.equals(mark_examples(examples, seed=3))
    activating = marked.filter(pl.col("activating"))
    assert 0 < (activating["marking"] == "correct").sum() < activating.height  # both sides of the coin came up
    for row in activating.iter_rows(named=True):
        cat = row["tokens"].index(" cat")
        if row["marking"] == "correct":
            assert row["marked"] == [cat]
        else:  # as many tokens, all silent (at most 0.1 of the excerpt's 5.0)
            assert len(row["marked"]) == 1 and row["activations"][row["marked"][0]] <= 0.5
    silent = marked.filter(~pl.col("activating"))
    assert (silent["marking"] == "incorrect").all()
    assert (silent["marked"].list.len() == 1).all()  # as many marks as the correct markings have


def test_an_oracle_scores_balanced_accuracy_one_and_the_prompt_marks_the_chosen_tokens():
    examples = synthetic_examples(10, 10)
    client = fake_chat_client(oracle)
    answers, metrics = score_fuzzing(client, "m", "the word cat", examples, batch_size=4)
    assert metrics.balanced_accuracy == 1.0
    assert metrics.n_examples == 20
    assert metrics.n_activating == (answers["marking"] == "correct").sum()  # the positives are correct markings
    shown = [text for call in client.calls for text in asked_texts(call)]
    for text, row in zip(shown, answers.join(examples, on="excerpt_id").iter_rows(named=True), strict=True):
        assert marked_words(text) == [row["tokens"][j].strip() for j in row["marked"]]
    assert answers.columns == [
        "excerpt_id",
        "example_kind",
        "activating",
        "marking",
        "marked",
        "answer",
        "probability",
        "batch",
        "prompt_tokens",
    ]


def test_planted_log_probabilities_give_auroc_one():
    def planted(request):
        return graded_reply([0.6 if set(marked_words(t)) == {"cat"} else 0.4 for t in asked_texts(request)])

    _, metrics = score_fuzzing(fake_chat_client(planted), "m", "cats", synthetic_examples(8, 8), use_logprobs=True)
    assert metrics.auroc == 1.0
    assert metrics.balanced_accuracy == 1.0


def test_a_client_that_always_says_yes_is_not_rewarded():
    always = fake_chat_client(lambda request: chat_reply(json.dumps([1] * len(asked_texts(request)))))
    _, metrics = score_fuzzing(always, "m", "cats", synthetic_examples(10, 10))
    assert metrics.balanced_accuracy == pytest.approx(0.5)
    assert metrics.recall == 1.0
