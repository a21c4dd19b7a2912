"""The prompts of the detection, fuzzing and surprisal scorers."""

import re

import pytest

from neuron_assets.prompts import classifiers
from neuron_assets.prompts.classifiers import (
    MARK_CLOSE,
    MARK_OPEN,
    detection_messages,
    excerpt_text,
    fuzzing_messages,
    marked_text,
    surprisal_prompt,
)


def test_each_prompt_has_a_version():
    assert classifiers.DETECTION_PROMPT_VERSION == "detection-v1"
    assert classifiers.FUZZING_PROMPT_VERSION == "fuzzing-v1"
    assert classifiers.SURPRISAL_PROMPT_VERSION == "surprisal-v1"


def test_detection_shows_the_explanation_then_the_examples_numbered_from_one():
    system, user = detection_messages("the word cat", [["The", " cat"], ["A", "\n", "dog"]])
    assert system["role"] == "system" and "JSON array" in system["content"]
    question = user["content"]
    assert question.startswith("Explanation: the main thing this neuron does is find the word cat.\n\n")
    assert "Example 1: The cat\nExample 2: A\\ndog\n" in question  # one line per excerpt, newlines escaped
    assert question.endswith("Reply with a JSON array of 2 integers, each 0 or 1.")


def test_fuzzing_marks_exactly_the_chosen_tokens():
    tokens = ["The", " cat", " sat", " on", " the", " cat", "."]
    text = marked_text(tokens, {1, 5, 6})
    assert text == f"The {MARK_OPEN}cat{MARK_CLOSE} sat on the {MARK_OPEN}cat{MARK_CLOSE}{MARK_OPEN}.{MARK_CLOSE}"
    assert re.findall(r"<<(.*?)>>", text) == ["cat", "cat", "."]
    assert marked_text(tokens, set()) == excerpt_text(tokens)


def test_fuzzing_messages_number_the_marked_excerpts():
    _, user = fuzzing_messages("cats", [["A", " cat"], ["A", " dog"]], [[1], [0]])
    assert "Example 1: A <<cat>>\nExample 2: <<A>> dog\n" in user["content"]
    with pytest.raises(ValueError, match="2 excerpts but 1 sets of marked positions"):
        fuzzing_messages("cats", [["A"], ["B"]], [[0]])


def test_surprisal_puts_the_raw_excerpt_after_an_explained_or_a_neutral_prefix():
    explained = surprisal_prompt("the word cat", ["The", " cat", "\n"])
    neutral = surprisal_prompt(None, ["The", " cat", "\n"])
    assert explained.text == "The following text is an example of: the word cat.\n\nThe cat\n"
    assert neutral.text == "The following text is an example of: text.\n\nThe cat\n"
    assert explained.text[explained.excerpt_start :] == neutral.text[neutral.excerpt_start :] == "The cat\n"
