"""Test sentences written by the explainer from an explanation, and what the subject model does on them.

The explainer is asked for sentences that, by the explanation, should make the neuron
fire. Where the neuron stays silent on one, the explanation is too broad: such a sentence
is a *false positive* (its maximum activation is below ``false_positive_fraction`` of the
neuron's largest recorded activation; 0.2 by default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from neuron_assets.llm.errors import LLMError
from neuron_assets.llm.fan_out import map_neurons
from neuron_assets.prompts.revision import parse_sentences, sentence_writer_messages
from neuron_assets.storage.schemas import RevisionSentences, polars_schema


class SentenceWriterError(ValueError):
    """The explainer wrote no usable sentence for a neuron."""


def write_sentences(
    client: Any,
    model: str,
    explanation: str,
    *,
    n_sentences: int = 10,
    max_attempts: int = 3,
    temperature: float = 1.0,
    max_tokens: int = 400,
    seed: int = 0,
) -> list[str]:
    """Up to ``n_sentences`` distinct sentences; asks again (next seed) while fewer came back.

    Returns fewer than asked only after ``max_attempts`` replies, and the caller records the
    shortfall; none at all is a ``SentenceWriterError`` naming the last reply.
    """
    sentences: list[str] = []
    raw = ""
    for attempt in range(max_attempts):
        response = client.chat.completions.create(
            model=model,
            messages=sentence_writer_messages(explanation, n_sentences),
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed + attempt,
        )
        raw = response["choices"][0]["message"]["content"] or ""
        sentences += [s for s in parse_sentences(raw) if s not in sentences]
        if len(sentences) >= n_sentences:
            return sentences[:n_sentences]
    if not sentences:
        raise SentenceWriterError(f"{max_attempts} replies from {model!r} held no sentence; last: {raw!r}")
    return sentences


def write_sentences_for_neurons(
    client: Any,
    model: str,
    explanations: pl.DataFrame,
    *,
    n_sentences: int = 10,
    seed: int = 0,
    concurrency: int = 1,
    on_neuron: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """(layer, neuron, sample, sentence, text) for every explanation in ``explanations``
    (layer, neuron, sample, explanation); a neuron that gets no sentence fails with the others
    still written (``NeuronFailures``)."""
    by_neuron = explanations.sort("layer", "neuron", "sample").group_by("layer", "neuron", maintain_order=True)
    groups = [((layer, neuron), group) for (layer, neuron), group in by_neuron]

    def job(group: pl.DataFrame) -> Callable[[], list[tuple[int, list[str]]]]:
        return lambda: [
            (sample, write_sentences(client, model, text, n_sentences=n_sentences, seed=seed + 1000 * sample))
            for sample, text in group.select("sample", "explanation").iter_rows()
        ]

    written = map_neurons(
        "sentence writing",
        [(key, job(group)) for key, group in groups],
        expected_errors=(SentenceWriterError, LLMError),
        concurrency=concurrency,
        on_done=on_neuron,
    )
    rows = [
        (layer, neuron, sample, i, text)
        for ((layer, neuron), _), samples in zip(groups, written, strict=True)
        for sample, sentences in samples
        for i, text in enumerate(sentences)
    ]
    return pl.DataFrame(
        rows,
        schema=polars_schema(RevisionSentences, ["layer", "neuron", "sample", "sentence", "text"]),
        orient="row",
    )


def measure_sentences(
    sentences: pl.DataFrame,
    tokenize: Callable[[list[str]], list[list[int]]],
    token_text: Callable[[list[int]], list[str]],
    activations: Callable[[list[list[int]], int, int], Sequence[np.ndarray]],
    max_tokens: int,
) -> pl.DataFrame:
    """Add the subject model's tokens and the neuron's true activations to each sentence.

    ``activations(token_ids, layer, neuron)`` runs the model. A sentence the tokenizer turns
    into nothing, or into more than ``max_tokens`` tokens, is kept with its
    ``rejected_reason`` and no activations, so a shortfall is always on record.
    """
    token_ids = tokenize(sentences["text"].to_list()) if len(sentences) else []
    frame = sentences.with_columns(token_ids=pl.Series(token_ids, dtype=pl.List(pl.Int64)))
    frame = frame.with_columns(
        rejected_reason=pl.when(pl.col("token_ids").list.len() == 0)
        .then(pl.lit("the subject model's tokenizer gives no token for it"))
        .when(pl.col("token_ids").list.len() > max_tokens)
        .then(pl.format("{} tokens, over the limit of {}", pl.col("token_ids").list.len(), pl.lit(max_tokens)))
        .otherwise(None)
    )
    measured: dict[tuple[int, int, int, int], tuple[list[str], list[float]]] = {}
    accepted = frame.filter(pl.col("rejected_reason").is_null())
    for (layer, neuron), group in accepted.group_by("layer", "neuron"):
        ids = group["token_ids"].to_list()
        values = activations(ids, layer, neuron)
        for key, sentence_ids, sentence_values in zip(
            group.select("layer", "neuron", "sample", "sentence").rows(), ids, values, strict=True
        ):
            measured[key] = (token_text(sentence_ids), [float(v) for v in np.asarray(sentence_values).reshape(-1)])
    keys = frame.select("layer", "neuron", "sample", "sentence").rows()
    return frame.with_columns(
        tokens=pl.Series([measured.get(k, ([], []))[0] for k in keys], dtype=pl.List(pl.String)),
        activations=pl.Series([measured.get(k, ([], []))[1] for k in keys], dtype=pl.List(pl.Float64)),
    ).with_columns(max_activation=pl.when(pl.col("rejected_reason").is_null()).then(pl.col("activations").list.max()))


def mark_false_positives(sentences: pl.DataFrame, neuron_max: pl.DataFrame, fraction: float) -> pl.DataFrame:
    """``is_false_positive``: the sentence's maximum activation is below ``fraction`` of the
    neuron's largest recorded one (``neuron_max``: layer, neuron, max); null for a rejected sentence."""
    if not 0 < fraction <= 1:
        raise ValueError(f"false_positive_fraction must be in (0, 1], got {fraction}")
    return (
        sentences.join(neuron_max.select("layer", "neuron", pl.col("max").alias("neuron_max")), on=["layer", "neuron"])
        .with_columns(is_false_positive=pl.col("max_activation") < fraction * pl.col("neuron_max"))
        .drop("neuron_max")
    )


def split_sentences(sentences: pl.DataFrame, n_revision: int, seed: int) -> pl.DataFrame:
    """``split``: per neuron and sample, a seeded shuffle of the measured sentences sends the first
    ``n_revision`` to ``revision`` (shown to the reviser) and the rest to ``scoring`` (added to
    the scoring set); null for a rejected sentence."""
    order = pl.int_range(pl.len()).shuffle(seed=seed).over("layer", "neuron", "sample")
    measured = sentences.filter(pl.col("rejected_reason").is_null()).sort("layer", "neuron", "sample", "sentence")
    split = measured.with_columns(
        split=pl.when(order < n_revision).then(pl.lit("revision")).otherwise(pl.lit("scoring"))
    ).select("layer", "neuron", "sample", "sentence", "split")
    return sentences.join(split, on=["layer", "neuron", "sample", "sentence"], how="left")
