"""Controls and comparisons: is an explanation better than chance, and better than the baselines?

- ``control_explanations``: each neuron gets another neuron's explanation from the same
  layer, to be simulated and scored like its own. Those scores are the null
  distribution: what an explanation scores on a neuron it was not written for.
- ``compare_methods``: per layer and scoring set, each method's mean score over neurons
  with a bootstrap interval, and its paired difference from the explanation's score
  (resampling neurons), so "no better than control" is visible at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from neuron_assets.scorers.methods import CONTROL, EXPLANATION
from neuron_assets.storage.schemas import Explanations, MethodComparisons, Simulations, polars_schema

# What the simulator takes: an explanation and the neuron it was written for (no stored table holds both).
CONTROL_SCHEMA = {
    **polars_schema(Simulations, ["layer", "neuron", "sample", "method", "explanation_neuron"]),
    **polars_schema(Explanations, ["explanation"]),
}


def control_explanations(explanations: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """For each neuron, the first explanation (sample 0) of another neuron of its layer.

    Within a layer the neurons are shuffled (seeded) and each takes the explanation of the
    next one in that order, so every explanation is used once and none on its own neuron.
    A layer with a single explained neuron has no control.
    Returns (layer, neuron, sample, method, explanation_neuron, explanation).
    """
    own = explanations.filter((pl.col("method") == EXPLANATION) & (pl.col("sample") == 0))
    frames = []
    for (layer,), group in own.sort("neuron").group_by("layer", maintain_order=True):
        if len(group) < 2:
            continue
        order = np.random.default_rng([seed, int(layer)]).permutation(len(group))
        neurons = group["neuron"].to_numpy()[order]
        texts = group["explanation"].to_numpy()[order]
        frames.append(
            pl.DataFrame(
                {
                    "layer": pl.Series([layer] * len(group), dtype=pl.Int64),
                    "neuron": pl.Series(neurons, dtype=pl.Int64),
                    "sample": pl.Series([0] * len(group), dtype=pl.Int64),
                    "method": [CONTROL] * len(group),
                    "explanation_neuron": pl.Series(np.roll(neurons, -1), dtype=pl.Int64),
                    "explanation": pl.Series(np.roll(texts, -1), dtype=pl.String),
                }
            )
        )
    return pl.concat(frames).sort("layer", "neuron") if frames else pl.DataFrame(schema=CONTROL_SCHEMA)


def check_explained(explanations: pl.DataFrame, methods: Sequence[str], step: str) -> None:
    """A ``ValueError`` naming ``step`` when ``methods`` names one other than the control that the
    explanations table holds no explanation of: raised before anything is scored."""
    missing = [m for m in methods if m != CONTROL and m not in explanations["method"].unique().to_list()]
    if missing:
        raise ValueError(
            f"{step} asked for {missing}, but the explanations table holds none: add them to its 'methods'"
        )


def explanation_jobs(explanations: pl.DataFrame, methods: Sequence[str], seed: int = 0) -> pl.DataFrame:
    """What a step scores of one side's ``explanations``: the stored explanations of ``methods``
    (each on its own neuron) and, where ``methods`` names ``CONTROL``, ``control_explanations``
    (shuffled with ``seed``). Returns ``CONTROL_SCHEMA``'s columns."""
    jobs = [explanations.filter(pl.col("method").is_in(methods)).with_columns(explanation_neuron=pl.col("neuron"))]
    if CONTROL in methods:
        jobs.append(control_explanations(explanations, seed=seed))
    return pl.concat([frame.select(list(CONTROL_SCHEMA)) for frame in jobs], how="vertical")


COMPARISON_SCHEMA = polars_schema(
    MethodComparisons,
    [
        "layer",
        "scoring_set",
        "method",
        "n_neurons",
        "mean_score",
        "mean_ci_low",
        "mean_ci_high",
        "n_paired",
        "explanation_minus_method",
        "difference_ci_low",
        "difference_ci_high",
    ],
)


def compare_methods(
    scores: pl.DataFrame, n_resamples: int = 2000, seed: int = 0, level: float = 0.95, reference: str = EXPLANATION
) -> pl.DataFrame:
    """Per layer, scoring set and method: mean score with a bootstrap interval, and the mean
    paired difference (``reference``, the explanation by default, minus method) over neurons
    scored by both, with its interval.

    A neuron's score for a method is the mean over its samples' defined scores, so a
    neuron with several explanation samples is not favoured over its single control.
    Intervals are percentile bootstraps over neurons; undefined scores are left out and
    ``n_neurons`` / ``n_paired`` say how many neurons each number covers.
    """
    per_neuron = (
        scores.filter(pl.col("correlation").is_not_null())
        .group_by("layer", "scoring_set", "method", "neuron")
        .agg(score=pl.col("correlation").mean())
    )
    own = per_neuron.filter(pl.col("method") == reference).select(
        "layer", "scoring_set", "neuron", pl.col("score").alias("explanation_score")
    )
    rng = np.random.default_rng(seed)
    tail = (1.0 - level) / 2
    rows = []
    for (layer, scoring_set, method), group in per_neuron.sort("layer", "scoring_set", "method", "neuron").group_by(
        "layer", "scoring_set", "method", maintain_order=True
    ):
        values = group["score"].to_numpy()
        low, high = _bootstrap_mean(values, rng, n_resamples, tail)
        paired = group.join(own, on=["layer", "scoring_set", "neuron"])
        difference = (paired["explanation_score"] - paired["score"]).to_numpy()
        diff_low, diff_high = _bootstrap_mean(difference, rng, n_resamples, tail)
        rows.append(
            (
                layer,
                scoring_set,
                method,
                len(values),
                float(values.mean()),
                low,
                high,
                len(difference),
                float(difference.mean()) if len(difference) else None,
                diff_low,
                diff_high,
            )
        )
    return pl.DataFrame(rows, schema=COMPARISON_SCHEMA, orient="row")


def _bootstrap_mean(
    values: np.ndarray, rng: np.random.Generator, n_resamples: int, tail: float
) -> tuple[float | None, float | None]:
    """Percentile interval of the mean; None for fewer than 2 values (no spread to resample)."""
    if len(values) < 2:
        return None, None
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))
