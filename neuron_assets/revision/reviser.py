"""Revised explanations (method.md §8), and the study's two controls.

- ``revised``: the original top excerpts, the original explanation and the revision split
  of the generated sentences with their real activations;
- ``reexplained`` (control): the same without the original explanation;
- ``random_sentences`` (control): the original explanation with excerpts on which the
  neuron does fire (explanation-pool top excerpts the explainer was not shown) in place
  of the generated sentences.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from neuron_assets.explainers.explainer import ask_for_explanation
from neuron_assets.llm.errors import LLMError
from neuron_assets.llm.fan_out import map_neurons
from neuron_assets.prompts.fewshot import Record
from neuron_assets.prompts.revision import revision_messages
from neuron_assets.prompts.templates import ExplanationParseError, parse_explanation
from neuron_assets.storage.schemas import Revisions, polars_schema

ORIGINAL, REVISED, REEXPLAINED, RANDOM_SENTENCES = "original", "revised", "reexplained", "random_sentences"
REVISION_KINDS = (REVISED, REEXPLAINED, RANDOM_SENTENCES)


def check_kinds(kinds: list[str]) -> list[str]:
    unknown = sorted(set(kinds) - set(REVISION_KINDS))
    if unknown or not kinds:
        raise ValueError(f"revision kinds {unknown or '(none given)'} are not among {list(REVISION_KINDS)}")
    return [k for k in REVISION_KINDS if k in kinds]


def revise_neurons(
    client: Any,
    model: str,
    jobs: pl.DataFrame,
    *,
    temperature: float = 1.0,
    max_tokens: int = 60,
    max_attempts: int = 3,
    seed: int = 0,
    concurrency: int = 1,
    on_neuron: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """One revised explanation per row of ``jobs``: (layer, neuron, sample, revision_kind,
    original_explanation, top_tokens, top_activations, new_tokens, new_activations), the last
    four lists of excerpts. Returns (layer, neuron, sample, revision_kind, explanation, raw_reply)."""
    groups = [
        ((layer, neuron), group) for (layer, neuron), group in jobs.group_by("layer", "neuron", maintain_order=True)
    ]

    def job(group: pl.DataFrame) -> Callable[[], list[tuple[Any, ...]]]:
        def run() -> list[tuple[Any, ...]]:
            rows = []
            for row in group.iter_rows(named=True):
                records = [Record(t, a) for t, a in zip(row["top_tokens"], row["top_activations"], strict=True)]
                new = [Record(t, a) for t, a in zip(row["new_tokens"], row["new_activations"], strict=True)]
                shown = None if row["revision_kind"] == REEXPLAINED else row["original_explanation"]
                raw = ask_for_explanation(
                    client,
                    model,
                    revision_messages(records, new, shown),
                    f"the {row['revision_kind']} prompt",
                    temperature=temperature,
                    max_tokens=max_tokens,
                    max_attempts=max_attempts,
                    seed=seed + 1000 * row["sample"],
                )
                rows.append((row["sample"], row["revision_kind"], parse_explanation(raw), raw))
            return rows

        return run

    revised = map_neurons(
        "revision",
        [(key, job(group)) for key, group in groups],
        expected_errors=(ExplanationParseError, LLMError),
        concurrency=concurrency,
        on_done=on_neuron,
    )
    rows = [
        (layer, neuron, *row)
        for ((layer, neuron), _), neuron_rows in zip(groups, revised, strict=True)
        for row in neuron_rows
    ]
    return pl.DataFrame(
        rows,
        schema=polars_schema(Revisions, ["layer", "neuron", "sample", "revision_kind", "explanation", "raw_reply"]),
        orient="row",
    )


def revision_jobs(
    originals: pl.DataFrame,
    records: pl.DataFrame,
    sentences: pl.DataFrame,
    excerpts: pl.DataFrame,
    kinds: list[str],
    *,
    n_examples: int,
    n_random_excerpts: int,
    seed: int,
) -> pl.DataFrame:
    """The input of ``revise_neurons``: per explanation in ``originals`` and kind, the top
    ``n_examples`` explanation-pool excerpts and the new evidence (the revision split of
    ``sentences``, or for ``random_sentences`` firing excerpts), with which sentences or
    excerpts were shown. A neuron with no new evidence gets no job."""
    tokens = excerpts.select("excerpt_id", "tokens")
    top = (
        records.filter((pl.col("kind") == "top") & (pl.col("pool") == "explanation") & (pl.col("rank") < n_examples))
        .join(tokens, on="excerpt_id")
        .sort("layer", "neuron", "rank")
        .group_by("layer", "neuron", maintain_order=True)
        .agg(top_tokens="tokens", top_activations="activations")
    )
    generated = (
        sentences.filter(pl.col("split") == "revision")
        .sort("layer", "neuron", "sentence")
        .group_by("layer", "neuron", maintain_order=True)
        .agg(new_tokens="tokens", new_activations="activations", shown_sentences="sentence")
        .with_columns(shown_excerpt_ids=pl.lit([], dtype=pl.List(pl.Int64)))
    )
    firing = (
        random_firing_excerpts(records, n_examples, n_random_excerpts, seed)
        .join(tokens, on="excerpt_id")
        .group_by("layer", "neuron", maintain_order=True)
        .agg(new_tokens="tokens", new_activations="activations", shown_excerpt_ids="excerpt_id")
        .with_columns(shown_sentences=pl.lit([], dtype=pl.List(pl.Int64)))
    )
    base = originals.select("layer", "neuron", "sample", original_explanation="explanation").join(
        top, on=["layer", "neuron"]
    )
    columns = [
        "layer",
        "neuron",
        "sample",
        "revision_kind",
        "original_explanation",
        "top_tokens",
        "top_activations",
        "new_tokens",
        "new_activations",
        "shown_sentences",
        "shown_excerpt_ids",
    ]
    jobs = [
        base.join(firing if kind == RANDOM_SENTENCES else generated, on=["layer", "neuron"])
        .with_columns(revision_kind=pl.lit(kind))
        .select(columns)
        for kind in kinds
    ]
    return pl.concat(jobs, how="vertical").sort("layer", "neuron", "revision_kind")


def random_firing_excerpts(records: pl.DataFrame, n_shown: int, n: int, seed: int) -> pl.DataFrame:
    """For the random-sentences control: per neuron, ``n`` seeded picks among the explanation-pool
    top excerpts the explainer was not shown (rank >= ``n_shown``) on which the neuron fires.

    Returns (layer, neuron, excerpt_id, activations); a neuron with fewer such excerpts gets
    what there is.
    """
    candidates = records.filter(
        (pl.col("kind") == "top")
        & (pl.col("pool") == "explanation")
        & (pl.col("rank") >= n_shown)
        & (pl.col("max_activation") > 0)
    ).sort("layer", "neuron", "rank")
    return (
        candidates.with_columns(order=pl.int_range(pl.len()).shuffle(seed=seed).over("layer", "neuron"))
        .filter(pl.col("order") < n)
        .sort("layer", "neuron", "order")
        .select("layer", "neuron", "excerpt_id", "activations")
    )
