"""Scores of original and revised explanations (method.md §8, step 5).

Each explanation of a neuron (the original and every revision) is simulated on the
neuron's original scoring excerpts (top and random) and on the scoring split of the
generated sentences, and scored on two sets: ``original`` (the excerpts alone) and
``extended`` (the excerpts plus those sentences). The original is simulated by the same
requests as in ``simulations``, so with the response cache on it costs nothing again.
"""

from __future__ import annotations

import polars as pl

from neuron_assets.scorers.scoring import score
from neuron_assets.storage.schemas import RevisionScores, polars_schema

GENERATED = "generated"
REVISION_SCORING_SETS = {"original": ("top", "random"), "extended": ("top", "random", GENERATED)}


def revision_scoring_inputs(
    scoring_excerpts: pl.DataFrame, excerpts: pl.DataFrame, sentences: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The (layer, neuron, excerpt_id, excerpt_kind, activations) to simulate and the
    (excerpt_id, tokens) they need: scored corpus excerpts, then the scoring-split sentences
    under ids after the corpus's own (``excerpt_kind`` 'generated')."""
    corpus = scoring_excerpts.filter(pl.col("excerpt_kind").is_in(["top", "random"])).select(
        "layer", "neuron", "excerpt_id", "excerpt_kind", "activations"
    )
    first_id = int(excerpts["excerpt_id"].max()) + 1
    generated = (
        sentences.filter(pl.col("split") == "scoring")
        .sort("layer", "neuron", "sentence")
        .with_row_index("offset")
        .with_columns(excerpt_id=pl.col("offset").cast(pl.Int64) + first_id, excerpt_kind=pl.lit(GENERATED))
    )
    scoring = pl.concat([corpus, generated.select(corpus.columns)], how="vertical")
    texts = pl.concat(
        [excerpts.select("excerpt_id", "tokens"), generated.select("excerpt_id", "tokens")], how="vertical"
    )
    return scoring, texts


def score_revisions(simulations: pl.DataFrame) -> pl.DataFrame:
    """Per (layer, neuron, sample, revision_kind) and set: the correlation of simulated with true activations."""
    rows = []
    keys = ["layer", "neuron", "sample", "method"]
    for values, group in simulations.sort("excerpt_id").group_by(keys, maintain_order=True):
        for name, kinds in REVISION_SCORING_SETS.items():
            chosen = group.filter(pl.col("excerpt_kind").is_in(kinds))
            result = score(chosen["simulated"].to_list(), chosen["true_activations"].to_list())
            rows.append(
                (*values, name, result.correlation, result.n_tokens, result.n_unsimulated, result.undefined_reason)
            )
    return pl.DataFrame(
        rows,
        schema=polars_schema(
            RevisionScores,
            [
                "layer",
                "neuron",
                "sample",
                "revision_kind",
                "scoring_set",
                "correlation",
                "n_tokens",
                "n_unsimulated",
                "undefined_reason",
            ],
        ),
        orient="row",
    )
