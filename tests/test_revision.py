"""Revision with generated sentences (method.md §8): sentences, their measurement, the split, the
reviser's prompt and the scores, on scripted LLMs and a scripted subject model."""

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from neuron_assets.prompts.fewshot import Record
from neuron_assets.prompts.revision import parse_sentences, revision_messages
from neuron_assets.revision.reviser import (
    REEXPLAINED,
    REVISED,
    check_kinds,
    random_firing_excerpts,
    revise_neurons,
)
from neuron_assets.revision.scores import revision_scoring_inputs, score_revisions
from neuron_assets.revision.sentences import (
    SentenceWriterError,
    mark_false_positives,
    measure_sentences,
    split_sentences,
    write_sentences,
)


def _chat(replies, seen=None):
    replies = iter(replies)

    def create(**request):
        if seen is not None:
            seen.append(request)
        return {"choices": [{"message": {"content": next(replies)}}]}

    return SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("1. The cat sat.\n2) A dog ran.\n3 - Birds sing.", ["The cat sat.", "A dog ran.", "Birds sing."]),
        ('Here you go:\n1. "Quoted one."\n2. Quoted one.\n\n3. Third', ["Quoted one.", "Third"]),
        ("- first\n* second", ["first", "second"]),
        ("no numbers here\nsecond line", ["no numbers here", "second line"]),
        ("", []),
    ],
)
def test_sentences_are_read_from_numbered_bulleted_or_plain_lines_without_duplicates(reply, expected):
    assert parse_sentences(reply) == expected


def test_the_writer_is_asked_again_while_sentences_are_missing_and_a_shortfall_is_returned_not_padded():
    seen = []
    client = _chat(["1. a\n2. b", "1. b\n2. c", "1. d"], seen)
    assert write_sentences(client, "m", "cats", n_sentences=4, max_attempts=3) == ["a", "b", "c", "d"]
    assert [r["seed"] for r in seen] == [0, 1, 2]
    client = _chat(["1. a", "1. a", "1. b"])
    assert write_sentences(client, "m", "cats", n_sentences=10, max_attempts=3) == ["a", "b"]


def test_a_writer_that_writes_no_sentence_is_an_error_naming_its_reply():
    with pytest.raises(SentenceWriterError, match="3 replies from 'm' held no sentence; last: ''"):
        write_sentences(_chat(["", "", ""]), "m", "cats", n_sentences=10)


def _sentences(texts, layer=0, neuron=7):
    return pl.DataFrame(
        {"layer": layer, "neuron": neuron, "sample": 0, "sentence": list(range(len(texts))), "text": texts},
        schema={"layer": pl.Int64, "neuron": pl.Int64, "sample": pl.Int64, "sentence": pl.Int64, "text": pl.String},
    )


def test_sentences_the_tokenizer_cannot_take_are_kept_with_their_reason_and_the_rest_measured():
    texts = ["cat here", "", "one two three four five six"]
    runs = []

    def activations(ids, layer, neuron):
        runs.append((len(ids), layer, neuron))
        return [np.asarray([float(i) for i in sentence]) for sentence in ids]

    frame = measure_sentences(
        _sentences(texts),
        tokenize=lambda batch: [[len(w) for w in text.split()] for text in batch],
        token_text=lambda ids: [f"t{i}" for i in ids],
        activations=activations,
        max_tokens=4,
    )
    assert runs == [(1, 0, 7)]  # only the one acceptable sentence went through the model
    assert frame["rejected_reason"].to_list() == [
        None,
        "the subject model's tokenizer gives no token for it",
        "6 tokens, over the limit of 4",
    ]
    assert frame["activations"].to_list() == [[3.0, 4.0], [], []]
    assert frame["max_activation"].to_list() == [4.0, None, None]


def test_a_false_positive_is_a_sentence_below_the_threshold_share_of_the_neurons_max():
    frame = _sentences(["a", "b", "c"]).with_columns(
        max_activation=pl.Series([1.9, 2.0, None]), rejected_reason=pl.Series([None, None, "too long"])
    )
    stats = pl.DataFrame({"layer": [0], "neuron": [7], "max": [10.0]})
    assert mark_false_positives(frame, stats, 0.2)["is_false_positive"].to_list() == [True, False, None]
    with pytest.raises(ValueError, match="false_positive_fraction must be in"):
        mark_false_positives(frame, stats, 0.0)


def test_the_split_sends_n_of_each_neurons_measured_sentences_to_revision_the_rest_to_scoring():
    frame = pl.concat([_sentences(list("abcdefg")), _sentences(list("xyz"), neuron=8)]).with_columns(
        rejected_reason=pl.when(pl.col("text") == "g").then(pl.lit("too long"))
    )
    split = split_sentences(frame, n_revision=2, seed=3)
    counts = split.group_by("neuron", "split").len().sort("neuron", "split", nulls_last=True).rows()
    assert counts == [(7, "revision", 2), (7, "scoring", 4), (7, None, 1), (8, "revision", 2), (8, "scoring", 1)]
    assert split_sentences(frame, 2, 3).equals(split)  # the seed fixes the split
    assert split.filter(pl.col("text") == "g")["split"].to_list() == [None]


def test_the_reviser_sees_new_sentences_on_the_top_excerpts_scale_and_the_control_never_sees_the_old_explanation():
    top = [Record(["a", "cat"], [0.0, 8.0])]
    new = [Record(["the", "dog"], [0.0, 4.0])]
    (_, revised) = revision_messages(top, new, "cats")
    (_, control) = revision_messages(top, new, None)
    assert "A first explanation was: the main thing this neuron does is find cats." in revised["content"]
    assert "cats" not in control["content"]
    assert "dog\t5" in revised["content"]  # 4 on a scale whose top is 8: 5 of 10


def test_revisions_are_asked_per_kind_and_unknown_kinds_are_refused():
    jobs = pl.DataFrame(
        {
            "layer": [0, 0],
            "neuron": [7, 7],
            "sample": [0, 0],
            "revision_kind": [REVISED, REEXPLAINED],
            "original_explanation": ["cats", "cats"],
            "top_tokens": [[["a", "cat"]]] * 2,
            "top_activations": [[[0.0, 8.0]]] * 2,
            "new_tokens": [[["the", "dog"]]] * 2,
            "new_activations": [[[0.0, 0.0]]] * 2,
        }
    )
    seen = []
    frame = revise_neurons(_chat(["cats, not dogs.", "animals."], seen), "m", jobs)
    assert frame.select("revision_kind", "explanation").rows() == [
        (REVISED, "cats, not dogs"),
        (REEXPLAINED, "animals"),
    ]
    assert "find cats." in seen[0]["messages"][-1]["content"] and "find cats." not in seen[1]["messages"][-1]["content"]
    with pytest.raises(ValueError, match=r"revision kinds \['better'\] are not among"):
        check_kinds(["revised", "better"])


def test_the_random_sentences_control_shows_firing_explanation_pool_excerpts_the_explainer_was_not_shown():
    records = pl.DataFrame(
        {
            "layer": 0,
            "neuron": 7,
            "kind": ["top"] * 5 + ["random"],
            "pool": ["explanation"] * 4 + ["scoring"] * 2,
            "rank": [0, 1, 2, 3, 0, 0],
            "excerpt_id": [10, 11, 12, 13, 14, 15],
            "max_activation": [9.0, 8.0, 0.0, 7.0, 9.0, 1.0],
            "activations": [[1.0]] * 6,
        }
    )
    picked = random_firing_excerpts(records, n_shown=1, n=5, seed=0)
    assert sorted(picked["excerpt_id"]) == [11, 13]  # not 10 (shown), 12 (silent), 14/15 (scoring pool)


def test_original_and_revised_are_scored_on_the_original_set_and_on_it_extended_by_the_generated_sentences():
    scoring_excerpts = pl.DataFrame(
        {
            "layer": 0,
            "neuron": 7,
            "excerpt_id": [1, 2, 3],
            "excerpt_kind": ["top", "random", "calibration_top"],
            "activations": [[0.0, 5.0], [0.0, 0.0], [9.0, 9.0]],
        }
    )
    excerpts = pl.DataFrame({"excerpt_id": [1, 2, 3], "tokens": [["a", "b"]] * 3})
    sentences = pl.DataFrame(
        {
            "layer": 0,
            "neuron": 7,
            "sentence": [0, 1],
            "split": ["scoring", "revision"],
            "tokens": [["x", "y"], ["z"]],
            "activations": [[0.0, 6.0], [1.0]],
        }
    )
    scoring, texts = revision_scoring_inputs(scoring_excerpts, excerpts, sentences)
    assert scoring.select("excerpt_id", "excerpt_kind").rows() == [(1, "top"), (2, "random"), (4, "generated")]
    assert texts.filter(pl.col("excerpt_id") == 4)["tokens"].to_list() == [["x", "y"]]
    simulated = scoring.rename({"activations": "true_activations"}).with_columns(
        layer=0,
        neuron=7,
        sample=0,
        method=pl.lit("original"),
        simulated=pl.Series([[0.0, 9.0], [0.0, 0.0], [9.0, 0.0]]),  # right on the excerpts, wrong on the sentence
    )
    scores = score_revisions(simulated).select("scoring_set", "correlation").rows()
    assert scores[0] == ("original", pytest.approx(1.0))
    assert scores[1][0] == "extended" and scores[1][1] < 0.5
