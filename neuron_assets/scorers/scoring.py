"""Scoring sets, correlation score, held-out linear calibration and explained variance (method.md §5).

Scores pool every token of every scoring excerpt before computing anything, as the
study does: averaging per-excerpt correlations would over-weight short, flat excerpts.
A score that cannot be computed (constant sequence, no tokens) is returned as
``value=None`` with a reason, never as NaN or a silent 0.

A token the simulator gave no value (no digit among the top log-probabilities, a line
the chat or JSON reply did not line up) counts as a simulated 0, as in the study's
reference code, and is counted in ``n_unsimulated``: every explanation of a neuron is
scored on the same tokens. Dropping such tokens instead lets a simulator raise its score
by staying silent where it would be wrong (2 dropped tokens of 10 turned 0.63 into 0.998).

The linear calibration that maps a simulation onto the neuron's scale is fitted on
separate calibration excerpts, never on the tokens it scores: fitted on those, explained
variance is exactly the correlation squared and says nothing new. Held out, it can be
lower, and negative when the calibrated simulation is further from the truth than the
truth's own mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from neuron_assets.sampling.excerpts import SCORING_POOL
from neuron_assets.scorers.methods import CALIBRATION_KINDS, SCORING_SETS
from neuron_assets.storage.schemas import Scores, polars_schema


@dataclass(frozen=True)
class Score:
    """One explanation's score on one scoring set."""

    correlation: float | None
    explained_variance: float | None
    calibration_slope: float | None
    calibration_intercept: float | None
    n_tokens: int
    n_unsimulated: int
    undefined_reason: str | None


def pool(
    simulated: Sequence[Sequence[float | None]], true: Sequence[Sequence[float]]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Flatten excerpts into one token sequence; a token the simulator left unpredicted counts as 0.

    Returns (simulated, true, number of unsimulated tokens). Excerpts must have matching
    lengths: a mismatch is a bug upstream and is raised, not papered over.
    """
    if len(simulated) != len(true):
        raise ValueError(f"{len(simulated)} simulated excerpts but {len(true)} true excerpts")
    for i, (s_row, a_row) in enumerate(zip(simulated, true, strict=True)):
        if len(s_row) != len(a_row):
            raise ValueError(f"excerpt {i}: {len(s_row)} simulated tokens but {len(a_row)} true tokens")
    sims = [s for row in simulated for s in row]
    unsimulated = sum(s is None for s in sims)
    filled = np.asarray([0.0 if s is None else float(s) for s in sims], dtype=np.float64)
    return filled, np.asarray([float(a) for row in true for a in row], dtype=np.float64), unsimulated


def score(
    simulated: Sequence[Sequence[float | None]],
    true: Sequence[Sequence[float]],
    calibration: tuple[float, float] | None = None,
) -> Score:
    """Pearson correlation of pooled simulated vs true activations, and the explained variance
    of the simulation mapped by ``calibration`` (slope, intercept), which was fitted on other
    excerpts; without a calibration the explained variance is None."""
    s, a, unsimulated = pool(simulated, true)
    slope, intercept = calibration or (None, None)
    reason = _undefined_reason(s, a)
    if reason is not None:
        return Score(None, None, slope, intercept, len(s), unsimulated, reason)
    rho = float(np.corrcoef(s, a)[0, 1])
    if slope is None or intercept is None:
        return Score(rho, None, None, None, len(s), unsimulated, None)
    ev = 1.0 - float(np.mean((slope * s + intercept - a) ** 2)) / float(np.var(a))
    return Score(rho, ev, slope, intercept, len(s), unsimulated, None)


def fit_calibration(
    simulated: Sequence[Sequence[float | None]], true: Sequence[Sequence[float]]
) -> tuple[float, float] | None:
    """Least-squares linear map (slope, intercept) from the simulator's scale onto the neuron's.

    None when it cannot be fitted: fewer than 2 tokens, or a constant simulation (no slope
    exists). A constant truth fits slope 0 at its value, which is a valid calibration.
    """
    s, a, _ = pool(simulated, true)
    if len(s) < 2 or np.ptp(s) == 0:
        return None
    s_centered = s - s.mean()
    slope = float(np.dot(s_centered, a - a.mean()) / np.dot(s_centered, s_centered))
    return slope, float(a.mean() - slope * s.mean())


def _undefined_reason(s: np.ndarray, a: np.ndarray) -> str | None:
    if len(s) < 2:
        return f"only {len(s)} token(s); correlation needs at least 2"
    if np.ptp(a) == 0:
        return "true activations are constant over the scoring set"
    if np.ptp(s) == 0:
        return "simulated activations are constant over the scoring set"
    return None


def select_scoring_excerpts(
    records: pl.DataFrame, n_top: int, n_random: int, n_calibration_top: int = 0, n_calibration_random: int = 0
) -> pl.DataFrame:
    """Each neuron's scoring and calibration excerpts, all from the scoring pool.

    Scoring: its top ``n_top`` and the first ``n_random`` random excerpts that are not
    among those (an excerpt is scored once, whatever brought it in). Calibration: the next
    ``n_calibration_top`` top ranks and the next ``n_calibration_random`` random ones, so no
    calibration excerpt is scored. Both come from the scoring pool, whose documents the
    explainer never saw. Asking for more than were recorded is an error, not a silently
    smaller set.
    """
    neuron = ["layer", "neuron"]
    top = records.filter((pl.col("kind") == "top") & (pl.col("pool") == SCORING_POOL)).sort(*neuron, "rank")
    top = top.with_columns(position=pl.int_range(pl.len()).over(neuron))
    all_top = top.filter(pl.col("position") < n_top + n_calibration_top).select(*neuron, "excerpt_id")
    random = (
        records.filter(pl.col("kind") == "random")
        .join(all_top, on=[*neuron, "excerpt_id"], how="anti")
        .sort(*neuron, "rank")
        .with_columns(position=pl.int_range(pl.len()).over(neuron))
    )
    position = pl.col("position")
    chosen = [
        (top.filter(position < n_top), "top", n_top, "top scoring-pool"),
        (random.filter(position < n_random), "random", n_random, "random"),
        (
            top.filter(position.is_between(n_top, n_top + n_calibration_top, closed="left")),
            "calibration_top",
            n_calibration_top,
            "further top scoring-pool (calibration)",
        ),
        (
            random.filter(position.is_between(n_random, n_random + n_calibration_random, closed="left")),
            "calibration_random",
            n_calibration_random,
            "further random (calibration)",
        ),
    ]
    n_neurons = records.select(neuron).n_unique()
    for frame, _, wanted, what in chosen:
        if wanted == 0:
            continue
        counts = frame.group_by(neuron).len()["len"]
        fewest = 0 if len(counts) < n_neurons else int(counts.min() or 0)
        if fewest < wanted:
            raise ValueError(
                f"scoring needs {wanted} {what} excerpts per neuron but only {fewest} were recorded; "
                "record more (activation_records top_k / n_random) or score with fewer"
            )
    return pl.concat([frame.with_columns(excerpt_kind=pl.lit(kind)) for frame, kind, _, _ in chosen]).select(
        "layer", "neuron", "excerpt_id", "excerpt_kind", "activations"
    )


SCORE_SCHEMA = polars_schema(
    Scores,
    [
        "layer",
        "neuron",
        "sample",
        "method",
        "explanation_neuron",
        "scoring_set",
        "correlation",
        "explained_variance",
        "calibration_slope",
        "calibration_intercept",
        "n_tokens",
        "n_unsimulated",
        "undefined_reason",
        "n_calibration_tokens",
    ],
)
SCORED_BY = ["layer", "neuron", "sample", "method", "explanation_neuron"]


def score_simulations(simulations: pl.DataFrame) -> pl.DataFrame:
    """Both scoring sets for every (layer, neuron, sample, method), calibrated on its calibration excerpts.

    ``simulations`` holds one row per simulated excerpt: layer, neuron, sample, method,
    explanation_neuron, excerpt_id, excerpt_kind, simulated, true_activations. A token
    baseline's predictions are scored by the same code as an LLM's simulation.
    """
    rows = []
    for values, group in simulations.sort("excerpt_id").group_by(SCORED_BY, maintain_order=True):
        held_out = group.filter(pl.col("excerpt_kind").is_in(CALIBRATION_KINDS))
        calibration = fit_calibration(held_out["simulated"].to_list(), held_out["true_activations"].to_list())
        n_calibration = int(held_out["true_activations"].list.len().sum()) if len(held_out) else 0
        for name, kinds in SCORING_SETS.items():
            chosen = group.filter(pl.col("excerpt_kind").is_in(kinds))
            result = score(chosen["simulated"].to_list(), chosen["true_activations"].to_list(), calibration)
            rows.append(
                {
                    **dict(zip(SCORED_BY, values, strict=True)),
                    "scoring_set": name,
                    **asdict(result),
                    "n_calibration_tokens": n_calibration,
                }
            )
    return pl.DataFrame(rows, schema=SCORE_SCHEMA)
