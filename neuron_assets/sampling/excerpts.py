"""Fixed-length token excerpts cut from documents, and the explanation/scoring split.

An excerpt is ``length`` consecutive tokens of one document; a document's tail shorter
than that is dropped, so no excerpt crosses a document boundary. Whole documents go to
either the explanation pool or the scoring pool, so explanations are never scored on
text from a document they were written from.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import polars as pl

EXPLANATION_POOL = "explanation"
SCORING_POOL = "scoring"


class ExcerptError(ValueError):
    """The documents do not yield usable excerpts."""


def assign_pools(doc_ids: Sequence[int], scoring_fraction: float, seed: int) -> dict[int, str]:
    """Split documents between the two pools at random (seeded); both pools get at least one."""
    if not 0.0 < scoring_fraction < 1.0:
        raise ExcerptError(f"scoring_fraction must be strictly between 0 and 1, got {scoring_fraction}")
    if len(doc_ids) < 2:
        raise ExcerptError(
            f"only {len(doc_ids)} document(s) long enough for an excerpt; explanation and "
            "scoring need documents of their own, so at least 2 are required"
        )
    shuffled = list(doc_ids)
    random.Random(seed).shuffle(shuffled)
    n_scoring = min(len(shuffled) - 1, max(1, round(scoring_fraction * len(shuffled))))
    return {d: (SCORING_POOL if i < n_scoring else EXPLANATION_POOL) for i, d in enumerate(shuffled)}


def make_excerpts(
    documents: pl.DataFrame,
    tokenize: Callable[[list[str]], list[list[int]]],
    token_text: Callable[[list[int]], list[str]],
    subject_model: str,
    *,
    length: int = 64,
    scoring_fraction: float = 0.5,
    seed: int = 0,
) -> pl.DataFrame:
    """Excerpts as (excerpt_id, corpus, subject_model, doc_id, pool, position, token_ids, tokens).

    ``tokenize`` maps texts to token ids without special tokens; ``token_text`` maps ids to
    the string each token shows in prompts.
    """
    if length < 2:
        raise ExcerptError(f"excerpt length must be at least 2 tokens, got {length}")
    tokenized = documents.select("doc_id", "corpus").with_columns(
        token_ids=pl.Series(tokenize(documents["text"].to_list()), dtype=pl.List(pl.Int64))
    )
    # One row per token, then one per window: memory in proportion to the corpus's tokens
    # (slicing each window out of its document's whole token list copied the document once
    # per window, quadratic in a long document's length).
    windows = (
        tokenized.with_columns(pl.col("token_ids").list.head(pl.col("token_ids").list.len() // length * length))
        .explode("token_ids")
        .drop_nulls("token_ids")  # a document shorter than one window leaves one null row
        .with_columns(position=pl.int_range(pl.len()).over("doc_id") // length * length)
        .group_by("doc_id", "corpus", "position", maintain_order=True)
        .agg("token_ids")
    )
    if windows.is_empty():
        raise ExcerptError(f"no document is at least {length} tokens long; nothing to excerpt")
    pools = assign_pools(windows["doc_id"].unique(maintain_order=True).to_list(), scoring_fraction, seed)
    vocabulary = windows["token_ids"].explode().unique().sort().to_list()
    texts = dict(zip(vocabulary, token_text(vocabulary), strict=True))
    return windows.with_row_index("excerpt_id").select(
        pl.col("excerpt_id").cast(pl.Int64),
        "corpus",
        pl.lit(subject_model).alias("subject_model"),
        "doc_id",
        pl.col("doc_id").replace_strict(pools, return_dtype=pl.String).alias("pool"),
        pl.col("position").cast(pl.Int64),
        "token_ids",
        pl.col("token_ids").list.eval(pl.element().replace_strict(texts, return_dtype=pl.String)).alias("tokens"),
    )
