"""Token baselines (method.md §6): what the tokens alone predict, with no explanation in between.

- ``lookup_table``: the mean activation of each (token, neuron) over the explanation
  pool (recorded in the same forward pass as the records); a scoring-pool token takes
  its token's mean, and a token never seen in the explanation pool the neuron's mean
  there.
- ``weight_based``: the neuron's activation when the layer's MLP sees the pre-MLP norm
  of the token's embedding alone, computed from the weights (see
  ``SubjectModel.direct_token_activations``).

Predictions are on the neuron's own scale; scoring calibrates them like any simulation,
and correlation does not depend on scale.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from neuron_assets.storage.schemas import TokenPredictions, polars_schema

PREDICTION_SCHEMA = polars_schema(
    TokenPredictions, ["layer", "neuron", "method", "excerpt_id", "excerpt_kind", "predicted", "true_activations"]
)


def lookup_fallback(lookup: pl.DataFrame) -> pl.DataFrame:
    """Each neuron's mean activation over the whole explanation pool, from its lookup table."""
    return lookup.group_by("layer", "neuron").agg(
        value=(pl.col("mean_activation") * pl.col("count")).sum() / pl.col("count").sum()
    )


def weight_based_table(
    direct_activations: Callable[[int, list[int], list[int]], np.ndarray],
    scoring: pl.DataFrame,
    excerpts: pl.DataFrame,
) -> pl.DataFrame:
    """(layer, neuron, token_id, value) for every token of the scoring excerpts, from the weights.

    ``direct_activations(layer, neurons, token_ids)`` gives [tokens, neurons] activations
    (``SubjectModel.direct_token_activations``); only tokens that are scored are computed.
    """
    token_ids = (
        scoring.join(excerpts.select("excerpt_id", "token_ids"), on="excerpt_id")["token_ids"]
        .explode()
        .unique()
        .sort()
        .to_list()
    )
    tables = []
    for (layer,), rows in scoring.group_by("layer", maintain_order=True):
        neurons = rows["neuron"].unique().sort().to_list()
        values = np.asarray(direct_activations(int(layer), neurons, token_ids), dtype=np.float64)
        tables.append(
            pl.DataFrame(
                {
                    "layer": pl.Series([int(layer)] * values.size, dtype=pl.Int64),
                    "neuron": pl.Series(neurons * len(token_ids), dtype=pl.Int64),
                    "token_id": pl.Series(np.repeat(token_ids, len(neurons)), dtype=pl.Int64),
                    "value": values.reshape(-1),
                }
            )
        )
    return pl.concat(tables)


def predict_from_token_table(
    table: pl.DataFrame,
    fallback: pl.DataFrame | None,
    scoring: pl.DataFrame,
    excerpts: pl.DataFrame,
    method: str,
) -> pl.DataFrame:
    """Per-token predictions for every scoring excerpt from a (layer, neuron, token_id) -> value table.

    ``fallback`` (layer, neuron, value) fills tokens the table lacks; a token the table
    lacks with no fallback for its neuron is an error, not a silent 0.
    """
    if fallback is None:
        fallback = pl.DataFrame(schema={"layer": pl.Int64, "neuron": pl.Int64, "value": pl.Float64})
    exploded = (
        scoring.join(excerpts.select("excerpt_id", "token_ids"), on="excerpt_id")
        .with_columns(position=pl.int_ranges(pl.col("token_ids").list.len()))
        .explode("token_ids", "position")
        .rename({"token_ids": "token_id"})
        .join(table.select("layer", "neuron", "token_id", "value"), on=["layer", "neuron", "token_id"], how="left")
        .join(fallback.select("layer", "neuron", pl.col("value").alias("fallback")), on=["layer", "neuron"], how="left")
        .with_columns(pl.col("value").fill_null(pl.col("fallback")))
    )
    missing = exploded.filter(pl.col("value").is_null())
    if not missing.is_empty():
        first = missing.row(0, named=True)
        raise ValueError(
            f"{method}: no value for token {first['token_id']} of layer {first['layer']} neuron "
            f"{first['neuron']}, and no fallback for that neuron"
        )
    return (
        exploded.sort("layer", "neuron", "excerpt_id", "position")
        .group_by("layer", "neuron", "excerpt_id", "excerpt_kind", maintain_order=True)
        .agg(predicted=pl.col("value"), true_activations=pl.col("activations").first())
        .with_columns(method=pl.lit(method))
        .select(list(PREDICTION_SCHEMA))
        .cast(PREDICTION_SCHEMA)  # type: ignore[arg-type]
    )


def top_lookup_tokens(lookup: pl.DataFrame, token_text: pl.DataFrame, n_tokens: int, min_count: int) -> pl.DataFrame:
    """Each neuron's ``n_tokens`` tokens with the highest mean activation, best first.

    Only tokens seen at least ``min_count`` times count: a token seen once has a mean that
    is one noisy activation. ``token_text`` maps token_id to its text.
    """
    return (
        lookup.filter(pl.col("count") >= min_count)
        .join(token_text, on="token_id")
        .sort("layer", "neuron", "mean_activation", descending=[False, False, True])
        .group_by("layer", "neuron", maintain_order=True)
        .head(n_tokens)
        .group_by("layer", "neuron", maintain_order=True)
        .agg("token", "mean_activation", "count")
    )


def token_texts(excerpts: pl.DataFrame) -> pl.DataFrame:
    """(token_id, token) for every token the excerpts hold."""
    return (
        excerpts.select("token_ids", "tokens")
        .explode("token_ids", "tokens")
        .unique("token_ids")
        .select(pl.col("token_ids").alias("token_id"), pl.col("tokens").alias("token"))
    )
