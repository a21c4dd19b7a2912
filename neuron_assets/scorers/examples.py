"""The examples the classifier scorers (detection, fuzzing, surprisal) ask about, for one neuron.

All come from the scoring pool, whose documents the explainer never saw:

- activating: the ``n_top`` highest-ranked top excerpts (kind 'top'), plus one excerpt per
  quantile bin (kind 'quantile', its lowest rank) where the bin has one that is not silent,
  so the weaker activations an explanation should also cover are asked about too;
- non-activating: the first ``n_non_activating`` random excerpts (kind 'random', by rank: a
  uniform sample already) that are *silent*: their largest activation is at most
  ``silent_fraction`` of the neuron's largest activation over all the records given (both
  pools: the top excerpts set the neuron's scale, as they did for the explainer). With the
  default 0.1, every token of a silent excerpt shows 0 on the explainer's 0..10 scale (1 at
  the bound itself), so "the neuron does not fire here" is what the explainer was shown too.

A random excerpt that is not silent is asked about in neither role: calling it activating
would mislabel excerpts where the neuron barely stirs, and calling it non-activating would
punish an explanation for covering them. A quantile excerpt that is silent is left out for
the same reason. An excerpt is asked about once, in the first role that takes it.

Too few activating or non-activating excerpts is a ``ValueError`` naming the neuron and the
numbers, raised before any LLM call: a smaller set would be scored silently on less.
The examples are shuffled with a seed, so a prompt's batch does not put all activating
examples first and the same neuron gets the same order on every run.
"""

from __future__ import annotations

import numpy as np
import polars as pl

N_TOP = 10  # top scoring-pool excerpts asked about as activating
N_NON_ACTIVATING = 10  # silent random scoring-pool excerpts asked about as non-activating
SILENT_FRACTION = 0.1  # a silent excerpt's largest activation, at most, as a fraction of the neuron's
EXAMPLE_SEED = 0  # the shuffle of the examples' order
SCORING_POOL = "scoring"
EXAMPLE_KINDS = ("top", "quantile", "non_activating")
EXAMPLE_SCHEMA = {
    "excerpt_id": pl.Int64,
    "example_kind": pl.String,
    "activating": pl.Boolean,
    "tokens": pl.List(pl.String),
    "activations": pl.List(pl.Float64),
}
NEURON_COLUMNS = ("layer", "neuron", "polarity")


def neuron_name(records: pl.DataFrame) -> str:
    """'layer L neuron N (polarity)' for one neuron's records; a ``ValueError`` if they hold several."""
    columns = [c for c in NEURON_COLUMNS if c in records.columns]
    neurons = records.select(columns).unique()
    if neurons.height != 1:
        raise ValueError(f"examples are selected for one neuron at a time, but the records hold {neurons.height}")
    row = neurons.row(0, named=True)
    name = f"layer {row['layer']} neuron {row['neuron']}"
    return f"{name} ({row['polarity']})" if row.get("polarity") else name


def select_examples(
    records: pl.DataFrame,
    excerpts: pl.DataFrame,
    *,
    n_top: int = N_TOP,
    n_non_activating: int = N_NON_ACTIVATING,
    silent_fraction: float = SILENT_FRACTION,
    seed: int = EXAMPLE_SEED,
) -> pl.DataFrame:
    """One neuron's classifier examples, shuffled: columns ``EXAMPLE_SCHEMA``.

    ``records``: the neuron's ``activation_records`` rows (columns layer, neuron, polarity if
    stored, pool, kind, quantile_bin, rank, excerpt_id, max_activation, activations); rows of
    the explanation pool only set the neuron's scale. ``excerpts``: rows of the ``excerpts``
    table (excerpt_id, tokens) holding at least the chosen excerpts. ``example_kind`` is
    'top', 'quantile' or 'non_activating'; ``activating`` is True for the first two.
    """
    name = neuron_name(records)
    neuron_max = records["max_activation"].max()
    if neuron_max is None or not neuron_max > 0:
        raise ValueError(f"{name}: its largest recorded activation is {neuron_max}, so no excerpt activates it")
    bound = silent_fraction * float(neuron_max)
    silent = pl.col("max_activation") <= bound
    scoring = records.filter(pl.col("pool") == SCORING_POOL)

    top = scoring.filter(pl.col("kind") == "top").sort("rank").head(n_top)
    quantile = (
        scoring.filter((pl.col("kind") == "quantile") & ~silent)
        .sort("quantile_bin", "rank")
        .group_by("quantile_bin", maintain_order=True)
        .first()
        .join(top.select("excerpt_id"), on="excerpt_id", how="anti")
    )
    activating = (
        pl.concat(
            [
                top.select("excerpt_id", "activations", example_kind=pl.lit("top")),
                quantile.select("excerpt_id", "activations", example_kind=pl.lit("quantile")),
            ]
        )
        .unique(subset="excerpt_id", keep="first", maintain_order=True)
        .with_columns(activating=pl.lit(True))
    )
    non_activating = (
        scoring.filter((pl.col("kind") == "random") & silent)
        .join(activating.select("excerpt_id"), on="excerpt_id", how="anti")
        .sort("rank")
        .unique(subset="excerpt_id", keep="first", maintain_order=True)
        .head(n_non_activating)
        .select("excerpt_id", "activations", example_kind=pl.lit("non_activating"), activating=pl.lit(False))
    )
    if top.height < n_top:
        raise ValueError(
            f"{name}: the classifier scorers need {n_top} top scoring-pool excerpts but {top.height} were recorded; "
            "record more (activation_records top_k) or ask for fewer (n_top)"
        )
    if non_activating.height < n_non_activating:
        raise ValueError(
            f"{name}: the classifier scorers need {n_non_activating} non-activating excerpts but only "
            f"{non_activating.height} of the random scoring-pool excerpts are silent (largest activation at most "
            f"{silent_fraction} x {float(neuron_max):.4g} = {bound:.4g}); record more random excerpts (n_random), "
            "ask for fewer (n_non_activating) or raise silent_fraction"
        )
    chosen = pl.concat([activating, non_activating], how="diagonal_relaxed")
    with_tokens = chosen.join(
        excerpts.select("excerpt_id", "tokens"), on="excerpt_id", how="left", maintain_order="left"
    )
    missing = with_tokens.filter(pl.col("tokens").is_null())["excerpt_id"].to_list()
    if missing:
        raise ValueError(f"{name}: excerpts {missing} are not in the excerpts given")
    mismatched = with_tokens.filter(pl.col("tokens").list.len() != pl.col("activations").list.len())
    if mismatched.height:
        raise ValueError(
            f"{name}: excerpts {mismatched['excerpt_id'].to_list()} have more or fewer tokens than activations"
        )
    order = np.random.default_rng(seed).permutation(with_tokens.height)
    return with_tokens[order].select(pl.col(c).cast(t) for c, t in EXAMPLE_SCHEMA.items())
