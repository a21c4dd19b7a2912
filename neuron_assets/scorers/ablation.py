"""The ablation score (method.md §5): how much of a neuron's effect on the next token its simulation keeps.

The subject model runs over a neuron's scoring excerpts three ways: as it is, with the
neuron's activation (its ``blocks.L.mlp.hook_post`` value, what recording stores) replaced
by a method's simulation mapped onto the neuron's scale by the held-out linear calibration
(the one ``scores`` fitted), and with it replaced by the neuron's mean activation over every
recorded token. Per token, the Jensen–Shannon divergence between the perturbed and the
original next-token distributions; then, per scoring set,
``1 - E[JSD(simulated)] / E[JSD(mean)]``: 1 when the simulation changes nothing, 0 when it
does no better than the mean, negative when it does worse.

Cost: per excerpt batch, one unperturbed pass gives the original distributions and the
residual stream entering the neuron's block; every perturbed pass (the mean, then each
method) starts there (``SubjectModel.logits_with_neuron_set``), so it runs only the blocks
from the neuron's layer on. Memory: a batch's logits, a few times over.

A method without a calibration (its simulation was constant on the calibration excerpts)
has no simulation on the neuron's scale: ``calibrated`` refuses it, and the table-level
``ablation_scores`` stores its score as undefined with that reason, as ``scores`` does for
an undefined correlation. A token the simulator left without a value counts as a simulated
0, as in ``scores``; a position a method does not simulate at all (the last of each excerpt,
for next-token explanations) keeps the neuron's real activation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from neuron_assets.scorers.methods import SCORING_SETS, TOKEN_BASELINES
from neuron_assets.storage.schemas import AblationScores, polars_schema

MEAN = "mean"  # the key of the mean-activation replacement
NO_CALIBRATION = "no calibration: the simulation was constant on the calibration excerpts"
START_TOLERANCE = 1e-4  # largest |logit| difference allowed between a mid-model start and a full pass


class AblationError(ValueError):
    """An ablation that cannot be run as asked: a layer not recorded, a method without a calibration, ..."""


def jensen_shannon(log_p: Any, log_q: Any) -> Any:
    """Jensen–Shannon divergence (natural log: 0..ln 2) between distributions given as log-probabilities
    along the last axis; one value per leading index. Identical rows give exactly 0."""
    import torch

    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    same = log_p == log_q  # exact zeros there (also where both are -inf)
    zero = torch.zeros((), dtype=log_p.dtype, device=log_p.device)
    p_term = torch.where(same | torch.isneginf(log_p), zero, log_p.exp() * (log_p - log_m))
    q_term = torch.where(same | torch.isneginf(log_q), zero, log_q.exp() * (log_q - log_m))
    return (0.5 * (p_term.sum(-1) + q_term.sum(-1))).clamp_min(0.0)


def calibrated(
    simulated: Sequence[float | None], calibration: tuple[float, float] | None, sign: float, what: str
) -> np.ndarray:
    """A simulation on the neuron's recorded scale: ``sign * (slope * s + intercept)``.

    ``sign`` is -1 for a negative side (its activations, and so its calibration, are the
    negated ones). An unsimulated token (None) counts as a simulated 0. No calibration is
    an ``AblationError`` naming ``what``.
    """
    if calibration is None:
        raise AblationError(
            f"{what} has no calibration (its simulation was constant on the calibration excerpts): "
            "it has no simulation on the neuron's scale to put in the neuron's place"
        )
    slope, intercept = calibration
    values = np.asarray([0.0 if s is None else float(s) for s in simulated], dtype=np.float64)
    return sign * (slope * values + intercept)


def ablation_divergences(
    model: Any,
    layer: int,
    neuron: int,
    token_ids: Sequence[Sequence[int]],
    replacements: Mapping[Hashable, Sequence[np.ndarray]],
    start_token_id: int | None,
    batch_size: int = 8,
    mid_model: bool = True,
    check_start: bool = False,
) -> dict[Hashable, list[np.ndarray]]:
    """Per replacement, per excerpt: the per-token JSD between next-token distributions with the
    neuron set to the replacement's values and without.

    ``replacements[key][i]`` holds a value per token of excerpt ``i`` (NaN keeps the real
    activation there; fewer values than tokens keep it at the excerpt's end).
    ``start_token_id`` goes before every excerpt, as in recording; its own position is never
    replaced or measured. ``mid_model`` starts each perturbed pass at the neuron's block
    from the cached residual stream; else each runs from the embeddings. ``check_start``
    compares, on the first batch, an unperturbed mid-model pass with the full one and raises
    an ``AblationError`` if they differ (an architecture whose blocks depend on their index).
    """
    import torch

    model.check_layers([layer])
    if not 0 <= neuron < model.d_mlp:
        raise AblationError(f"neuron {neuron} outside layer {layer}'s MLP, which has neurons 0..{model.d_mlp - 1}")
    if batch_size < 1:
        raise AblationError(f"batch_size must be at least 1, got {batch_size}")
    for key, rows in replacements.items():
        if len(rows) != len(token_ids):
            raise AblationError(f"replacement {key!r} has {len(rows)} excerpts for {len(token_ids)} excerpts")
        for i, (values, ids) in enumerate(zip(rows, token_ids, strict=True)):
            if len(values) > len(ids):
                raise AblationError(f"replacement {key!r}: {len(values)} values for excerpt {i}'s {len(ids)} tokens")
    offset = 0 if start_token_id is None else 1
    out: dict[Hashable, list[np.ndarray]] = {key: [np.zeros(0)] * len(token_ids) for key in replacements}
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(token_ids):
        by_length.setdefault(len(ids), []).append(i)
    checked = not (check_start and mid_model)
    for _, members in sorted(by_length.items()):
        for first in range(0, len(members), batch_size):
            chosen = members[first : first + batch_size]
            prefix = [[start_token_id]] * len(chosen) if offset else [[]] * len(chosen)
            tokens = torch.as_tensor([p + list(token_ids[i]) for p, i in zip(prefix, chosen, strict=True)])
            logits, start = model.logits_and_layer_input(tokens, layer)
            log_p = torch.log_softmax(logits[:, offset:].float(), dim=-1)
            if not checked:
                unchanged = torch.full(tokens.shape, float("nan"))
                again = model.logits_with_neuron_set(tokens, layer, neuron, unchanged, start)
                difference = float((again - logits).abs().max())
                if difference > START_TOLERANCE:
                    raise AblationError(
                        f"{model.name!r}: a pass started at block {layer} differs from a full pass by {difference:.3g} "
                        "in the logits; its blocks depend on their position: ablate with mid_model off"
                    )
                checked = True
            for key, rows in replacements.items():
                values = torch.full(tokens.shape, float("nan"), dtype=torch.float64)
                for row, i in enumerate(chosen):
                    given = torch.as_tensor(np.asarray(rows[i], dtype=np.float64))
                    values[row, offset : offset + len(given)] = given
                perturbed = model.logits_with_neuron_set(tokens, layer, neuron, values, start if mid_model else None)
                log_q = torch.log_softmax(perturbed[:, offset:].float(), dim=-1)
                for row, i in enumerate(chosen):  # row by row: a few [positions, vocabulary] temporaries at a time
                    out[key][i] = jensen_shannon(log_p[row], log_q[row]).double().cpu().numpy()
            del logits, start, log_p
    return out


def ablation_score(jsd_simulated: np.ndarray, jsd_mean: np.ndarray) -> tuple[float | None, str | None]:
    """``1 - mean(jsd_simulated) / mean(jsd_mean)`` over the same tokens, or (None, reason) when undefined."""
    if len(jsd_simulated) != len(jsd_mean):
        raise AblationError(f"{len(jsd_simulated)} simulated divergences but {len(jsd_mean)} mean divergences")
    if len(jsd_mean) == 0:
        return None, "no tokens to ablate"
    denominator = float(np.mean(jsd_mean))
    if denominator == 0.0:
        return None, "replacing the neuron by its mean activation changes no next-token distribution here"
    return 1.0 - float(np.mean(jsd_simulated)) / denominator, None


@dataclass(frozen=True)
class Method:
    """One scored method of one side of a neuron: the scores table's key and its calibration."""

    sample: int
    method: str
    explanation_neuron: int | None
    calibration: tuple[float, float] | None


ABLATION_SCHEMA = polars_schema(
    AblationScores,
    [
        "layer",
        "neuron",
        "polarity",
        "sample",
        "method",
        "explanation_neuron",
        "scoring_set",
        "ablation_score",
        "mean_jsd_simulated",
        "mean_jsd_mean",
        "mean_activation",
        "calibration_slope",
        "calibration_intercept",
        "n_tokens",
        "undefined_reason",
    ],
)
SIDE = ["layer", "neuron", "polarity"]
SCORED = ["sample", "method", "explanation_neuron"]


def ablation_scores(
    model: Any,
    scores: pl.DataFrame,
    simulations: pl.DataFrame,
    token_predictions: pl.DataFrame,
    scoring_excerpts: pl.DataFrame,
    excerpts: pl.DataFrame,
    neuron_stats: pl.DataFrame,
    *,
    start_token_id: int | None,
    scoring_sets: Sequence[str] = tuple(SCORING_SETS),
    methods: Sequence[str] | None = None,
    max_neurons: int | None = None,
    batch_size: int = 8,
    mid_model: bool = True,
    on_neuron: Callable[[int, int, str], None] | None = None,
) -> pl.DataFrame:
    """The ablation score of every scored method of every neuron side, per scoring set.

    Inputs are the stored tables of the layers to ablate (both polarities allowed):
    ``scores`` (which methods, and their calibrations), ``simulations`` and
    ``token_predictions`` (the simulated values per excerpt), ``scoring_excerpts`` (which
    excerpts each set pools), ``excerpts`` (their token ids) and ``neuron_stats`` (each
    neuron's mean). ``max_neurons`` keeps the lowest-numbered neurons of each layer.
    Everything is checked before the first forward pass: a layer with scores but no
    recording, an unknown scoring set, a method asked for that was not scored.
    """
    unknown_sets = [s for s in scoring_sets if s not in SCORING_SETS]
    if unknown_sets or not scoring_sets:
        raise AblationError(f"scoring set(s) {list(scoring_sets)}: choose among {list(SCORING_SETS)}")
    if max_neurons is not None and max_neurons < 1:
        raise AblationError(f"max_neurons must be at least 1 (or unset for every neuron), got {max_neurons}")
    scored_layers = sorted(set(scores["layer"].to_list()))
    recorded = set(neuron_stats["layer"].to_list())
    missing = [layer for layer in scored_layers if layer not in recorded]
    if missing:
        raise AblationError(
            f"layer(s) {missing} have scores but were not recorded (neuron_stats has {sorted(recorded)})"
        )
    model.check_layers(scored_layers)
    if methods is not None:
        absent = [m for m in methods if m not in set(scores["method"].to_list())]
        if absent:
            raise AblationError(
                f"method(s) {absent} were not scored in layer(s) {scored_layers}; "
                f"scored: {sorted(set(scores['method'].to_list()))}"
            )
        scores = scores.filter(pl.col("method").is_in(list(methods)))
    if max_neurons is not None:
        kept = (
            scores.select("layer", "neuron")
            .unique()
            .sort("layer", "neuron")
            .group_by("layer", maintain_order=True)
            .head(max_neurons)
        )
        scores = scores.join(kept, on=["layer", "neuron"])

    token_ids = dict(zip(excerpts["excerpt_id"].to_list(), excerpts["token_ids"].to_list(), strict=True))
    stats = {tuple(k): v for *k, v in neuron_stats.select(*SIDE, "mean").iter_rows()}
    simulated = _simulated_values(simulations, token_predictions)
    kinds = set(k for s in scoring_sets for k in SCORING_SETS[s])
    sides = scores.select(SIDE).unique().sort(SIDE)
    plans = []
    for layer, neuron, polarity in sides.iter_rows():
        if (layer, neuron, polarity) not in stats:
            raise AblationError(f"layer {layer} neuron {neuron} ({polarity}) was scored but has no neuron_stats row")
        chosen = scoring_excerpts.filter(
            (pl.col("layer") == layer)
            & (pl.col("neuron") == neuron)
            & (pl.col("polarity") == polarity)
            & pl.col("excerpt_kind").is_in(list(kinds))
        ).sort("excerpt_id")
        ids = chosen["excerpt_id"].to_list()
        absent = [i for i in ids if i not in token_ids]
        if absent:
            raise AblationError(f"scoring excerpt(s) {absent[:5]} of layer {layer} neuron {neuron} are not in excerpts")
        side_methods = [
            Method(sample, method, explanation_neuron, None if slope is None else (slope, intercept))
            for sample, method, explanation_neuron, slope, intercept in scores.filter(
                (pl.col("layer") == layer) & (pl.col("neuron") == neuron) & (pl.col("polarity") == polarity)
            )
            .select(*SCORED, "calibration_slope", "calibration_intercept")
            .unique(SCORED)
            .sort("method", "sample", "explanation_neuron", nulls_last=True)
            .iter_rows()
        ]
        sign = 1.0 if polarity == "positive" else -1.0
        real_mean = sign * float(stats[(layer, neuron, polarity)])
        replacements: dict[Hashable, list[np.ndarray]] = {MEAN: [np.full(len(token_ids[i]), real_mean) for i in ids]}
        for m in side_methods:
            if m.calibration is None:
                continue  # stored as undefined, with NO_CALIBRATION as its reason
            what = _describe(layer, neuron, polarity, m)
            key = (layer, neuron, polarity, m.sample, m.method, m.explanation_neuron)
            unsimulated = [i for i in ids if (*key, i) not in simulated]
            if unsimulated:
                raise AblationError(f"{what} has no simulated values for scoring excerpt(s) {unsimulated[:5]}")
            replacements[m] = [calibrated(simulated[(*key, i)], m.calibration, sign, what) for i in ids]
        plans.append((layer, neuron, polarity, chosen, ids, side_methods, real_mean, replacements))

    rows = []
    checked_layers: set[int] = set()
    for layer, neuron, polarity, chosen, ids, side_methods, real_mean, replacements in plans:
        divergences = ablation_divergences(
            model,
            layer,
            neuron,
            [token_ids[i] for i in ids],
            replacements,
            start_token_id,
            batch_size,
            mid_model,
            check_start=layer not in checked_layers,
        )
        checked_layers.add(layer)
        kind_of = chosen["excerpt_kind"].to_list()
        for scoring_set in scoring_sets:
            members = [j for j, kind in enumerate(kind_of) if kind in SCORING_SETS[scoring_set]]
            jsd_mean = _pooled(divergences[MEAN], members)
            for m in side_methods:
                row = {
                    "layer": layer,
                    "neuron": neuron,
                    "polarity": polarity,
                    "sample": m.sample,
                    "method": m.method,
                    "explanation_neuron": m.explanation_neuron,
                    "scoring_set": scoring_set,
                    "mean_jsd_mean": float(np.mean(jsd_mean)) if len(jsd_mean) else None,
                    "mean_activation": real_mean,
                    "calibration_slope": None if m.calibration is None else m.calibration[0],
                    "calibration_intercept": None if m.calibration is None else m.calibration[1],
                    "n_tokens": len(jsd_mean),
                }
                if m not in replacements:
                    rows.append(
                        {**row, "ablation_score": None, "mean_jsd_simulated": None, "undefined_reason": NO_CALIBRATION}
                    )
                    continue
                jsd = _pooled(divergences[m], members)
                value, reason = ablation_score(jsd, jsd_mean)
                rows.append(
                    {
                        **row,
                        "ablation_score": value,
                        "mean_jsd_simulated": float(np.mean(jsd)) if len(jsd) else None,
                        "undefined_reason": reason,
                    }
                )
        if on_neuron is not None:
            on_neuron(layer, neuron, polarity)
    return pl.DataFrame(rows, schema=ABLATION_SCHEMA)


def _pooled(per_excerpt: list[np.ndarray], members: list[int]) -> np.ndarray:
    return np.concatenate([per_excerpt[j] for j in members]) if members else np.zeros(0)


def _describe(layer: int, neuron: int, polarity: str, m: Method) -> str:
    whose = "" if m.explanation_neuron in (None, neuron) else f" (neuron {m.explanation_neuron}'s explanation)"
    return f"method {m.method!r} sample {m.sample}{whose} of layer {layer} neuron {neuron} ({polarity})"


def _simulated_values(simulations: pl.DataFrame, token_predictions: pl.DataFrame) -> dict[tuple, list[float | None]]:
    """Every simulated (or predicted) excerpt, keyed by (layer, neuron, polarity, sample, method,
    explanation_neuron, excerpt_id); token baselines have sample 0 and no explanation neuron."""
    values: dict[tuple, list[float | None]] = {}
    for layer, neuron, polarity, sample, method, explanation_neuron, excerpt_id, simulated in simulations.select(
        *SIDE, *SCORED, "excerpt_id", "simulated"
    ).iter_rows():
        values[(layer, neuron, polarity, sample, method, explanation_neuron, excerpt_id)] = simulated
    for layer, neuron, polarity, method, excerpt_id, predicted in token_predictions.select(
        *SIDE, "method", "excerpt_id", "predicted"
    ).iter_rows():
        if method in TOKEN_BASELINES:
            values[(layer, neuron, polarity, 0, method, None, excerpt_id)] = predicted
    return values
