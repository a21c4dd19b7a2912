"""One layer's explainable-directions search over a corpus, with the token lookup table (method.md §9).

Passes over the corpus, each running the subject model once per excerpt batch with a hook on
the layer (``run_model(tokens, hooks, stop_at_layer)``, as recording uses):

1. the covariance pass: the layer's full activation vectors over the explanation pool fold
   into a ``CovarianceAccumulator``; Σ^{-1/2} follows (``inverse_sqrt``, floored eigenvalues);
2. per round, the virtual pass: every excerpt's virtual neurons for all directions at once
   (activations @ P, P = Σ^{-1/2} Θᵀ), kept as excerpts × tokens × k, never the full vectors;
   from them each direction gets, like a real neuron, its lookup table (mean a_θ per token
   over the explanation pool), its top scoring-pool excerpts (by maximum a_θ) and random
   scoring-pool excerpts (a seeded sample, the top ones left out);
3. per round, the gather pass over only the union of those scoring excerpts: their full
   activation vectors, which the ascent on θ needs.

The lookup table explains and simulates each virtual neuron (a scoring token takes its
token's mean, a token unseen in the explanation pool the direction's mean there); the score
is the pooled Pearson correlation over the top and random scoring excerpts, as
``scorers.scoring`` scores a real neuron's top_and_random set. Round 0 also scores a sample
of the layer's real neurons with the same lookup table on the same kind of excerpts (their
projection columns are unit vectors, so the virtual pass holds their activations).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch

from neuron_assets.directions.ascent import (
    Explained,
    Round,
    coordinate_ascent,
    correlation,
    direction_projection,
    random_directions,
)
from neuron_assets.directions.covariance import DEFAULT_EPS, CovarianceAccumulator, Whitening, inverse_sqrt
from neuron_assets.sampling.excerpts import EXPLANATION_POOL, SCORING_POOL

RunModel = Callable[[torch.Tensor, dict[int, Callable[[torch.Tensor], None]], int], None]


class DirectionsError(ValueError):
    """Input the directions search cannot run on, named."""


@dataclass(frozen=True)
class Corpus:
    """The excerpts as arrays: token ids (excerpts × length), which are in the explanation pool,
    the token put before each excerpt (None: nothing), and each token id's text."""

    token_ids: np.ndarray
    explanation: np.ndarray
    start_token_id: int | None
    token_text: dict[int, str] = field(default_factory=dict)

    @staticmethod
    def of(excerpts: pl.DataFrame, start_token_id: int | None) -> Corpus:
        """From the ``excerpts`` table (both pools); an empty table or pool is a DirectionsError."""
        pools = set(excerpts["pool"].unique().to_list()) if len(excerpts) else set()
        missing = {EXPLANATION_POOL, SCORING_POOL} - pools
        if missing:
            raise DirectionsError(f"the excerpts have no {' and no '.join(sorted(missing))} pool excerpts")
        ids = np.stack(excerpts["token_ids"].to_numpy()).astype(np.int64)
        texts = excerpts.select("token_ids", "tokens").explode("token_ids", "tokens").unique("token_ids")
        return Corpus(
            ids,
            (excerpts["pool"] == EXPLANATION_POOL).to_numpy(),
            start_token_id,
            dict(zip(texts["token_ids"].to_list(), texts["tokens"].to_list(), strict=True)),
        )


@dataclass(frozen=True)
class TokenTable:
    """A lookup-table explanation of one virtual neuron: its mean per token over the explanation
    pool (``seen`` marks tokens that occur there), the fallback for unseen tokens, and its words."""

    means: np.ndarray
    seen: np.ndarray
    fallback: float
    text: str

    def simulate(self, token_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64)
        inside = ids < len(self.means)
        clipped = np.where(inside, ids, 0)
        known = inside & self.seen[clipped]
        return np.where(known, self.means[clipped], self.fallback)


@dataclass(frozen=True)
class SearchSettings:
    """How many directions, rounds and steps; the scoring excerpts per direction; the seed."""

    n_directions: int = 8
    rounds: int = 5
    steps_per_round: int = 100
    seed: int = 0
    n_top: int = 10
    n_random: int = 10
    batch_size: int = 16
    eps: float = DEFAULT_EPS
    n_neurons_compared: int = 64
    recover_fraction: float = 0.9
    describe_tokens: int = 5
    min_count: int = 2


@dataclass
class SearchResult:
    """The rounds (``Round``s of ``TokenTable``s), the whitening, the real neurons' scores,
    the last round's explanation steps (for truncation) and the covariance pass's token count."""

    history: list[Round[TokenTable]]
    whitening: Whitening
    neuron_scores: dict[int, float | None]
    last_explained: list[Explained[TokenTable, np.ndarray]]
    n_tokens: int


@dataclass
class _Progress:
    """What the explanation step carries between rounds: the round, round 0's neuron scores, the last step."""

    round: int = 0
    neuron_scores: dict[int, float | None] = field(default_factory=dict)
    last: list[Explained[TokenTable, np.ndarray]] = field(default_factory=list)


def layer_batches(
    run_model: RunModel,
    corpus: Corpus,
    layer: int,
    rows: np.ndarray,
    batch_size: int,
    on_batch: Callable[[np.ndarray, torch.Tensor], None],
) -> None:
    """Run the model over ``rows`` of the corpus in batches; ``on_batch(rows, activations)`` gets
    the layer's activations (batch × length × d_mlp), the start token's position dropped."""
    offset = 0 if corpus.start_token_id is None else 1
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        tokens = torch.as_tensor(corpus.token_ids[chunk], dtype=torch.long)
        if corpus.start_token_id is not None:
            tokens = torch.cat([torch.full((len(tokens), 1), corpus.start_token_id), tokens], dim=1)
        run_model(tokens, {layer: lambda acts, chunk=chunk: on_batch(chunk, acts[:, offset:])}, layer + 1)


def layer_covariance(
    run_model: RunModel, corpus: Corpus, layer: int, width: int, batch_size: int
) -> CovarianceAccumulator:
    """The layer's activation covariance over every explanation-pool token, in one pass."""
    accumulator = CovarianceAccumulator(width)
    rows = np.flatnonzero(corpus.explanation)
    layer_batches(run_model, corpus, layer, rows, batch_size, lambda _, acts: accumulator.add(acts))
    return accumulator


def search(
    run_model: RunModel,
    corpus: Corpus,
    layer: int,
    width: int,
    settings: SearchSettings,
    log: Callable[[str], None] = lambda _: None,
) -> SearchResult:
    """Random directions, Σ^{-1/2} from one covariance pass, then ``settings.rounds`` rounds of
    coordinate ascent with lookup-table explanations (see the module docstring).

    More directions than ``width`` (d_mlp), more scoring excerpts per direction than the
    scoring pool holds, or no round, is a DirectionsError raised before any forward pass; a singular or
    non-finite covariance is one raised after the covariance pass, before any round.
    """
    try:
        initial = random_directions(settings.n_directions, width, settings.seed)
    except ValueError as error:
        raise DirectionsError(str(error)) from error
    scoring_rows = np.flatnonzero(~corpus.explanation)
    if settings.n_top + settings.n_random > len(scoring_rows):
        raise DirectionsError(
            f"{settings.n_top} top and {settings.n_random} random scoring excerpts per direction were asked for "
            f"but the scoring pool has {len(scoring_rows)}"
        )
    if settings.n_top < 1:
        raise DirectionsError(f"n_top must be at least 1, got {settings.n_top}")
    if settings.rounds < 1 or settings.steps_per_round < 0:
        raise DirectionsError(
            f"rounds must be at least 1 and steps_per_round at least 0, got {settings.rounds} and "
            f"{settings.steps_per_round}"
        )
    if not 0.0 < settings.recover_fraction <= 1.0:
        raise DirectionsError(f"recover_fraction must lie in (0, 1], got {settings.recover_fraction}")
    try:
        accumulator = layer_covariance(run_model, corpus, layer, width, settings.batch_size)
        whitening = inverse_sqrt(accumulator.covariance(), accumulator.count, settings.eps)
    except ValueError as error:
        raise DirectionsError(f"layer {layer}: {error}") from error
    log(
        f"layer {layer}: covariance of {accumulator.count} tokens, {whitening.n_floored} eigenvalue(s) floored at "
        f"{settings.eps:g} x the largest"
    )
    order = np.random.default_rng(settings.seed).permutation(scoring_rows)
    neurons = np.sort(
        np.random.default_rng(settings.seed).choice(width, min(settings.n_neurons_compared, width), replace=False)
    )
    state = _Progress()

    def explain(thetas: np.ndarray) -> list[Explained[TokenTable, np.ndarray]]:
        projection = direction_projection(whitening, thetas)
        first = state.round == 0
        if first and len(neurons):
            units = np.zeros((width, len(neurons)))
            units[neurons, np.arange(len(neurons))] = 1.0
            projection = np.hstack([projection, units])
        virtual = virtual_pass(run_model, corpus, layer, projection, settings.batch_size)
        tables = lookup_tables(virtual, corpus, settings.describe_tokens, settings.min_count)
        chosen = [
            scoring_excerpts(virtual[:, :, j], order, settings.n_top, settings.n_random) for j in range(len(thetas))
        ]
        if first:
            scores = {}
            for column, neuron in enumerate(neurons, start=len(thetas)):
                rows = scoring_excerpts(virtual[:, :, column], order, settings.n_top, settings.n_random)
                simulated = tables[column].simulate(corpus.token_ids[rows].ravel())
                scores[int(neuron)] = correlation(simulated, virtual[rows, :, column].ravel())
            state.neuron_scores = scores
        union = np.unique(np.concatenate(chosen))
        full = gather(run_model, corpus, layer, union, width, settings.batch_size)
        where = {int(row): i for i, row in enumerate(union)}
        explained = []
        for j, rows in enumerate(chosen):
            ids = corpus.token_ids[rows].ravel()
            activations = full[[where[int(r)] for r in rows]].reshape(-1, width).astype(np.float64)
            explained.append(Explained(tables[j], ids, activations, tables[j].simulate(ids)))
        log(f"layer {layer}: round {state.round} explained {len(thetas)} direction(s)")
        state.round += 1
        state.last = explained
        return explained

    history = coordinate_ascent(
        initial,
        whitening,
        explain,
        lambda table, explained: table.simulate(explained.scoring),
        settings.rounds,
        settings.steps_per_round,
    )
    return SearchResult(history, whitening, state.neuron_scores, state.last, accumulator.count)


def virtual_pass(
    run_model: RunModel, corpus: Corpus, layer: int, projection: np.ndarray, batch_size: int
) -> np.ndarray:
    """Every excerpt's virtual neurons (excerpts × length × columns of ``projection``), in one pass."""
    n, length = corpus.token_ids.shape
    out = np.zeros((n, length, projection.shape[1]), dtype=np.float64)
    p = torch.as_tensor(projection)

    def keep(rows: np.ndarray, acts: torch.Tensor) -> None:
        out[rows] = (acts.detach().to("cpu", torch.float64) @ p).numpy()

    layer_batches(run_model, corpus, layer, np.arange(n), batch_size, keep)
    return out


def gather(
    run_model: RunModel, corpus: Corpus, layer: int, rows: np.ndarray, width: int, batch_size: int
) -> np.ndarray:
    """The full activation vectors (len(rows) × length × width, float32) of ``rows``, in one pass over them."""
    out = np.zeros((len(rows), corpus.token_ids.shape[1], width), dtype=np.float32)
    position = {int(row): i for i, row in enumerate(rows)}

    def keep(chunk: np.ndarray, acts: torch.Tensor) -> None:
        out[[position[int(r)] for r in chunk]] = acts.detach().to("cpu", torch.float32).numpy()

    layer_batches(run_model, corpus, layer, np.asarray(rows), batch_size, keep)
    return out


def lookup_tables(virtual: np.ndarray, corpus: Corpus, n_words: int, min_count: int) -> list[TokenTable]:
    """Each column's token lookup table over the explanation pool, described by its top tokens
    (those seen at least ``min_count`` times, highest mean first)."""
    ids = corpus.token_ids[corpus.explanation].ravel()
    values = virtual[corpus.explanation].reshape(len(ids), -1)
    size = int(corpus.token_ids.max()) + 1
    counts = np.bincount(ids, minlength=size)
    seen = counts > 0
    tables = []
    for column in range(values.shape[1]):
        sums = np.bincount(ids, weights=values[:, column], minlength=size)
        means = np.where(seen, sums / np.maximum(counts, 1), 0.0)
        frequent = np.flatnonzero(counts >= min_count)
        top = frequent[np.argsort(-means[frequent], kind="stable")][:n_words]
        words = ", ".join(f"{corpus.token_text.get(int(t), str(int(t)))!r} ({means[t]:.3g})" for t in top)
        tables.append(TokenTable(means, seen, float(values[:, column].mean()), f"lookup table, top tokens: {words}"))
    return tables


def scoring_excerpts(virtual: np.ndarray, order: np.ndarray, n_top: int, n_random: int) -> np.ndarray:
    """Rows of one virtual neuron's scoring set: its ``n_top`` scoring-pool excerpts of highest
    maximum, then the first ``n_random`` of the seeded random ``order`` (scoring pool) not among them."""
    maxima = virtual[order].max(axis=1)
    top = order[np.argsort(-maxima, kind="stable")[:n_top]]
    taken = set(top.tolist())
    random = [row for row in order if row not in taken][:n_random]
    return np.concatenate([top, np.asarray(random, dtype=top.dtype)])


def truncation(
    theta: np.ndarray,
    whitening: Whitening,
    explanation: TokenTable,
    explained: Explained[TokenTable, np.ndarray],
    recover_fraction: float,
) -> tuple[int | None, float | None, list[int], list[float]]:
    """How many of the direction's top-|weight| neurons recover its score.

    The virtual neuron is a · w with w = Σ^{-1/2} θ (a weight per neuron); keeping the top n
    weights by magnitude, n = 1, 2, 4, … , d, re-scores ``explanation``'s simulation on
    ``explained``'s scoring tokens (the last round's: the score the direction was found with).
    Returns the smallest n whose score reaches ``recover_fraction`` × the full score (None when
    the full score is undefined or not positive), that score, and the 10 top neurons and weights.
    """
    weights = whitening.matrix @ theta
    ranked = np.argsort(-np.abs(weights), kind="stable")
    simulation = explanation.simulate(explained.scoring)
    full = correlation(simulation, explained.activations @ weights)
    top = ranked[:10]
    if full is None or full <= 0:
        return None, None, top.tolist(), weights[top].tolist()
    width = len(weights)
    sizes = sorted({*(2**i for i in range(int(np.log2(width)) + 1)), width})
    for n in sizes:
        kept = np.zeros_like(weights)
        kept[ranked[:n]] = weights[ranked[:n]]
        rho = correlation(simulation, explained.activations @ kept)
        if rho is not None and rho >= recover_fraction * full:
            return n, rho, top.tolist(), weights[top].tolist()
    return width, full, top.tolist(), weights[top].tolist()


def mean_interval(values: Sequence[float | None]) -> tuple[int, int, float | None, float | None, float | None]:
    """(n defined, n undefined, mean, 95% interval low, high): normal approximation, mean ± 1.96
    standard errors (as the ablation_layers view), no interval under 2 values."""
    defined = np.asarray([v for v in values if v is not None], dtype=np.float64)
    undefined = len(values) - len(defined)
    if len(defined) == 0:
        return 0, undefined, None, None, None
    mean = float(defined.mean())
    if len(defined) < 2:
        return len(defined), undefined, mean, None, None
    half = 1.96 * float(defined.std(ddof=1)) / np.sqrt(len(defined))
    return len(defined), undefined, mean, mean - half, mean + half


def mutual_cosines(thetas: np.ndarray) -> np.ndarray:
    """|cos| between every pair of directions (k × k, zero diagonal)."""
    unit = thetas / np.linalg.norm(thetas, axis=1, keepdims=True)
    cosines = np.abs(unit @ unit.T)
    np.fill_diagonal(cosines, 0.0)
    return cosines


def summaries(result: SearchResult, layer: int, recover_fraction: float) -> pl.DataFrame:
    """One row per direction (``DirectionSummaries`` columns without lineage): start and found
    scores, the largest |cosine| to another found direction, and its truncation to top neurons."""
    from neuron_assets.storage.schemas import DirectionSummaries, polars_schema

    last_round = max(r.round for r in result.history)
    first = {r.direction: r for r in result.history if r.round == 0}
    last = sorted((r for r in result.history if r.round == last_round), key=lambda r: r.direction)
    thetas = np.stack([r.theta for r in last])
    cosines = mutual_cosines(thetas)
    rows = []
    for r in last:
        n, recovered, neurons, weights = truncation(
            r.theta, result.whitening, r.explanation, result.last_explained[r.direction], recover_fraction
        )
        rows.append(
            {
                "layer": layer,
                "direction": r.direction,
                "explanation_kind": "lookup_table",
                "explanation": r.explanation.text,
                "start_correlation": first[r.direction].correlation,
                "found_correlation": r.correlation,
                "max_abs_cosine": float(cosines[r.direction].max()) if len(last) > 1 else None,
                "neurons_to_recover": n,
                "recovered_correlation": recovered,
                "recover_fraction": recover_fraction,
                "top_neurons": [int(x) for x in neurons],
                "top_weights": [float(x) for x in weights],
            }
        )
    columns = [c for c in DirectionSummaries.to_schema().columns if c in rows[0]]
    return pl.DataFrame(rows, schema=polars_schema(DirectionSummaries, columns))


def comparison(
    summary: pl.DataFrame, neuron_scores: dict[int, float | None], stored: pl.DataFrame | None
) -> pl.DataFrame:
    """The three-way comparison: mean score with a 95% interval of the found directions, the random
    starting directions, the layer's neurons with this run's lookup table (same excerpt kinds and
    score), and the stored lookup_table scores of the recorded neurons (``stored``: their
    top_and_random correlations; None: no stored scores, said in the ``note``)."""
    groups = [
        ("found directions (last round)", summary["found_correlation"].to_list(), None),
        ("random starting directions (round 0)", summary["start_correlation"].to_list(), None),
        (
            "layer neurons, this run's lookup table",
            list(neuron_scores.values()),
            f"{len(neuron_scores)} random neurons of the layer, scored like the directions",
        ),
    ]
    if stored is None or stored.is_empty():
        groups.append(("recorded neurons, stored lookup_table scores", [], "no stored scores for this layer"))
    else:
        groups.append(
            (
                "recorded neurons, stored lookup_table scores",
                stored["correlation"].to_list(),
                "scores table: lookup_table, top_and_random, every stored side",
            )
        )
    rows = []
    for what, values, note in groups:
        n, undefined, mean, low, high = mean_interval(values)
        rows.append(
            {"what": what, "n": n, "n_undefined": undefined, "mean": mean, "ci_low": low, "ci_high": high, "note": note}
        )
    return pl.DataFrame(
        rows,
        schema={
            "what": pl.String,
            "n": pl.Int64,
            "n_undefined": pl.Int64,
            "mean": pl.Float64,
            "ci_low": pl.Float64,
            "ci_high": pl.Float64,
            "note": pl.String,
        },
    )
