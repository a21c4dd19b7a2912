"""Correlation score, linear calibration and explained variance (method.md §5).

Scores pool every token of every scoring excerpt before computing anything, as the
study does: averaging per-excerpt correlations would over-weight short, flat excerpts.
A score that cannot be computed (constant sequence, no tokens) is returned as
``value=None`` with a reason, never as NaN or a silent 0.

A token the simulator gave no value (no digit among the top log-probabilities, a line
the chat or JSON reply did not line up) counts as a simulated 0, as in the study's
reference code, and is counted in ``n_unsimulated``: every explanation of a neuron is
scored on the same tokens. Dropping such tokens instead lets a simulator raise its score
by staying silent where it would be wrong (2 dropped tokens of 10 turned 0.63 into 0.998).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl


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
    simulated: Sequence[Sequence[float | None]], true: Sequence[Sequence[float]]
) -> Score:
    """Pearson correlation of pooled simulated vs true activations, plus calibrated explained variance."""
    s, a, unsimulated = pool(simulated, true)
    reason = _undefined_reason(s, a)
    if reason is not None:
        return Score(None, None, None, None, len(s), unsimulated, reason)
    rho = float(np.corrcoef(s, a)[0, 1])
    slope, intercept = calibration(s, a)
    calibrated = slope * s + intercept
    ev = 1.0 - float(np.mean((calibrated - a) ** 2)) / float(np.var(a))
    return Score(rho, ev, slope, intercept, len(s), unsimulated, None)


def calibration(simulated: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Least-squares linear map from the simulator's 0..10 scale onto the neuron's scale."""
    s_centered = simulated - simulated.mean()
    slope = float(np.dot(s_centered, true - true.mean()) / np.dot(s_centered, s_centered))
    intercept = float(true.mean() - slope * simulated.mean())
    return slope, intercept


def _undefined_reason(s: np.ndarray, a: np.ndarray) -> str | None:
    if len(s) < 2:
        return f"only {len(s)} token(s); correlation needs at least 2"
    if np.ptp(a) == 0:
        return "true activations are constant over the scoring set"
    if np.ptp(s) == 0:
        return "simulated activations are constant over the scoring set"
    return None


SCORING_SETS = {"top_and_random": ("top", "random"), "random_only": ("random",)}


def score_simulations(simulations: pl.DataFrame) -> pl.DataFrame:
    """Both scoring sets for every (layer, neuron, sample): top-and-random and random-only."""
    rows = []
    groups = simulations.sort("excerpt_id").group_by("layer", "neuron", "sample", maintain_order=True)
    for (layer, neuron, sample), group in groups:
        for name, kinds in SCORING_SETS.items():
            chosen = group.filter(pl.col("excerpt_kind").is_in(kinds))
            result = score(chosen["simulated"].to_list(), chosen["true_activations"].to_list())
            rows.append({"layer": layer, "neuron": neuron, "sample": sample, "scoring_set": name, **asdict(result)})
    return pl.DataFrame(
        rows,
        schema={
            "layer": pl.Int64, "neuron": pl.Int64, "sample": pl.Int64, "scoring_set": pl.String,
            "correlation": pl.Float64, "explained_variance": pl.Float64,
            "calibration_slope": pl.Float64, "calibration_intercept": pl.Float64,
            "n_tokens": pl.Int64, "n_unsimulated": pl.Int64, "undefined_reason": pl.String,
        },
    )  # fmt: skip
