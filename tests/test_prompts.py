import pytest

from neuron_assets.prompts.templates import (
    EXPLANATION_PREFIX,
    UNKNOWN,
    ExplanationParseError,
    Record,
    explainer_messages,
    format_records,
    normalize,
    parse_explanation,
    simulator_prompt,
    simulator_prompt_for_excerpts,
)


def test_normalize_maps_max_to_ten_floors_and_zeroes_negatives():
    assert normalize([-3.0, 0.0, 0.49, 0.5, 0.99, 1.0], 1.0) == [0, 0, 4, 5, 9, 10]


def test_normalize_caps_values_above_the_shown_maximum():
    assert normalize([2.0], 1.0) == [10]


def test_normalize_of_a_never_positive_neuron_is_all_zero():
    assert normalize([-1.0, -0.5], -0.5) == [0, 0]


def test_listing_is_one_token_per_line_between_markers():
    text = format_records([Record(["a", "b"], [0.0, 2.0])])
    assert text == "<start>\na\t0\nb\t10\n<end>"


def test_tokens_with_tabs_and_newlines_are_escaped_to_keep_one_line_per_token():
    text = format_records([Record(["x\ty", "\n"], [1.0, 1.0])])
    assert "x\\ty\t10" in text and "\\n\t10" in text


def test_sparse_neurons_get_nonzero_pairs_repeated():
    # 1 of 10 tokens non-zero: 10% < 20%
    record = Record([f"t{i}" for i in range(10)], [0.0] * 9 + [3.0])
    text = format_records([record])
    assert "zeros filtered out" in text
    assert text.endswith("<start>\nt9\t10\n<end>")


def test_the_repeat_follows_all_excerpts_as_one_section_as_in_the_study():
    first = Record([f"a{i}" for i in range(10)], [0.0] * 9 + [3.0])
    second = Record([f"b{i}" for i in range(10)], [2.0] + [0.0] * 9)
    text = format_records([first, second])
    full_first, full_second = text.index("a0\t0"), text.index("b0\t6")
    header = text.index("Same activations, but with all zeros filtered out:")
    assert text.count("zeros filtered out") == 1
    assert full_first < full_second < header
    assert text[header:].split("\n")[1:] == ["<start>", "a9\t10", "<end>", "<start>", "b0\t6", "<end>"]


def test_the_few_shot_neurons_are_full_excerpts_one_sparse_enough_to_repeat_one_about_context():
    from neuron_assets.prompts.fewshot import EXAMPLE_NEURONS, quote_activations

    assert all(len(r.tokens) == len(r.activations) == 64 for n in EXAMPLE_NEURONS for r in n.records)
    repeats = ["zeros filtered out" in format_records(n.records) for n in EXAMPLE_NEURONS]
    assert repeats == [True, False]
    # the context neuron: the same word fires inside quotes and is silent outside them
    tokens = [" the", ' "', " the", '"', " the"]
    assert [value > 0 for value in quote_activations(tokens)] == [False, True, True, True, False]
    assert "quotation marks" in EXAMPLE_NEURONS[1].explanation


def test_dense_neurons_at_exactly_twenty_percent_are_not_repeated():
    record = Record([f"t{i}" for i in range(5)], [0.0, 0.0, 0.0, 0.0, 3.0])
    assert "zeros filtered out" not in format_records([record])


def test_normalization_uses_the_maximum_over_all_shown_records():
    text = format_records([Record(["a"], [1.0]), Record(["b"], [4.0])])
    assert "a\t2" in text and "b\t10" in text


def test_explainer_prompt_ends_asking_to_complete_the_sentence():
    messages = explainer_messages([Record(["a"], [1.0])])
    assert messages[0]["role"] == "system"
    assert messages[-1]["role"] == "user"
    assert messages[-1]["content"].endswith(EXPLANATION_PREFIX)
    assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * ((len(messages) - 2) // 2)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("words about cats.", "words about cats"),
        (" the main thing this neuron does is find words about cats.", "words about cats"),
        ('"words about cats"', "words about cats"),
        ("Explanation of neuron 3: the main thing this neuron does is find commas.\nMore", "commas"),
        ("\n\nplural nouns\nsecond line", "plural nouns"),
        (' "dogs".', "dogs"),
        ("'the word dogs.'", "the word dogs"),
        (': the word "dogs"', 'the word "dogs"'),
        ('"dogs" and "cats"', '"dogs" and "cats"'),
        ("Same activations, but with all zeros filtered out:", "Same activations, but with all zeros filtered out"),
    ],
)
def test_explanations_are_cleaned(raw, expected):
    assert parse_explanation(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", ".", "the main thing this neuron does is find."])
def test_empty_explanations_are_rejected(raw):
    with pytest.raises(ExplanationParseError, match="no explanation"):
        parse_explanation(raw)


def test_simulator_prompt_places_one_unknown_per_token_at_the_recorded_offsets():
    tokens = ["The", " cat", "\t", " unknown"]
    prompt = simulator_prompt("cats", tokens)
    assert len(prompt.placeholder_offsets) == len(tokens)
    for offset in prompt.placeholder_offsets:
        assert prompt.text[offset : offset + len(UNKNOWN)] == UNKNOWN
        assert prompt.text[offset - 1] == "\t"
    assert f"{EXPLANATION_PREFIX} cats." in prompt.text
    assert prompt.text.rstrip().endswith("<end>")


def test_several_excerpts_share_one_prefix_and_keep_one_placeholder_per_token_in_order():
    first, second = ["The", " cat"], [" a", " dog", " ran"]
    prompt = simulator_prompt_for_excerpts("animals", [first, second])
    single = simulator_prompt("animals", first)
    assert prompt.text.startswith(single.text)  # the one-excerpt prompt, then the next listing
    assert prompt.placeholder_offsets[:2] == single.placeholder_offsets
    assert len(prompt.placeholder_offsets) == 5 and prompt.placeholder_offsets == sorted(prompt.placeholder_offsets)
    lines = [prompt.text[: offset - 1].rsplit("\n", 1)[-1] for offset in prompt.placeholder_offsets]
    assert lines == ["The", " cat", " a", " dog", " ran"]
    assert prompt.text.count(f"{EXPLANATION_PREFIX} animals.") == 1
    assert prompt.text.endswith("<end>\n\n<start>\n a\tunknown\n dog\tunknown\n ran\tunknown\n<end>\n")


def test_simulator_prompt_is_deterministic_for_a_seed():
    assert simulator_prompt("x", ["a"], seed=3) == simulator_prompt("x", ["a"], seed=3)
