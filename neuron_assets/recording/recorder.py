"""Streaming activation recording (method.md §2).

One forward pass over the corpus serves every requested layer: a hook on each layer's
``blocks.{L}.mlp.hook_post`` folds the batch into that layer's ``LayerRecorder`` and the
pass stops after the deepest requested layer. A recorder keeps, per selected neuron,
the top-k excerpts of each pool by maximum activation (with their per-token
activations), the activations on a fixed random sample of scoring excerpts, running
sums for the statistics, and per-token sums over the explanation pool for the token
lookup-table baseline (method.md §6), so memory grows with neurons x (k + distinct
tokens), never with the corpus. On the CPU each batch is folded by one compiled pass
(``recording.fold``), its neurons split over threads; on a GPU by torch operations on the
device (``recording.torch_fold``), the state copied to the host once, when the tables are read.

Both signs: a gated MLP's unit (SmolLM2, Llama) takes large negative values, which the
0..10 scale of the explainer and simulator reads as 0. The ``negative`` polarity records
the negated activations with a second recorder in the same pass (its "top" excerpts are
the neuron's most negative ones), so the negative side is explained and scored like any
neuron, on its own rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import polars as pl
import torch

from neuron_assets.recording.fold import EXPLANATION, SCORING, FoldState, NumbaFold, best_first
from neuron_assets.recording.torch_fold import TorchFold
from neuron_assets.sampling.excerpts import EXPLANATION_POOL, SCORING_POOL

POOL_INDEX = {EXPLANATION_POOL: EXPLANATION, SCORING_POOL: SCORING}  # pool -> its index in fold's arrays
POOLS = tuple(POOL_INDEX)
POSITIVE, NEGATIVE = "positive", "negative"
POLARITY_SETTINGS = {POSITIVE: (POSITIVE,), NEGATIVE: (NEGATIVE,), "both": (POSITIVE, NEGATIVE)}
FOLDS = ("auto", "numba", "torch")  # auto: numba for activations on the CPU, torch on any other device


def polarities(setting: str) -> tuple[str, ...]:
    """The polarities a recording setting asks for: 'positive', 'negative' or 'both'."""
    if setting not in POLARITY_SETTINGS:
        raise ValueError(f"polarity {setting!r} is not one of {list(POLARITY_SETTINGS)}")
    return POLARITY_SETTINGS[setting]


def resolve_fold(fold: str, device: torch.device | str) -> str:
    """The fold that folds activations on ``device``: 'numba' or 'torch' ('auto' picks by device)."""
    if fold not in FOLDS:
        raise ValueError(f"fold {fold!r} is not one of {list(FOLDS)}")
    if fold != "auto":
        return fold
    return "numba" if torch.device(device).type == "cpu" else "torch"


@dataclass(frozen=True)
class RecordingSettings:
    """How the quantile-bin records for viewing are drawn from the random sample."""

    quantile_bins: tuple[tuple[float, float], ...] = ((0.5, 0.9), (0.9, 0.99))
    per_bin: int = 5


class LayerRecorder:
    """Folds batches of one layer's activations into top-k, random-sample and statistics state.

    The state is held by a fold made at the first batch, where the activations are:
    ``fold.NumbaFold`` (numpy, compiled) or ``torch_fold.TorchFold`` (tensors on their
    device), as ``fold`` says ('auto' by device). Both give the same tables (tests/test_recording_folds.py).
    """

    def __init__(
        self,
        layer: int,
        neurons: Sequence[int],
        random_excerpt_ids: Sequence[int],
        excerpt_length: int,
        top_k: int,
        vocabulary: torch.Tensor,
        polarity: str = POSITIVE,
        fold: str = "auto",
    ) -> None:
        resolve_fold(fold, "cpu")  # refuses an unknown fold now, not at the first batch
        self.layer = layer
        self.polarity = polarity
        self.neurons = torch.as_tensor(list(neurons), dtype=torch.long)
        self.top_k = top_k
        self.excerpt_length = excerpt_length
        self.random_ids = list(random_excerpt_ids)
        # Sorted ids of the explanation pool's distinct tokens (the rows of the token sums).
        self.vocabulary = vocabulary
        self.fold = fold
        self._fold: NumbaFold | TorchFold | None = None

    def update(
        self,
        activations: torch.Tensor,
        excerpt_ids: torch.Tensor,
        pools: torch.Tensor,
        slots: torch.Tensor,
        offset: int = 0,
    ) -> None:
        """Fold a batch: ``activations`` [batch, offset + tokens, d_mlp] (the first ``offset``
        positions are not recorded), excerpt ids and pool indexes (``fold.EXPLANATION`` or
        ``fold.SCORING``) [batch], and each token's row of the vocabulary [batch, tokens], on the host."""
        if self._fold is None:
            self._fold = self._make_fold(activations.device)
        self._fold.update(activations, excerpt_ids, pools, slots, offset)

    def _make_fold(self, device: torch.device) -> NumbaFold | TorchFold:
        sign = 1.0 if self.polarity == POSITIVE else -1.0
        shape = (self.neurons, self.random_ids, self.excerpt_length, self.top_k, len(self.vocabulary), sign)
        if resolve_fold(self.fold, device) == "numba":
            return NumbaFold(*shape)
        return TorchFold(*shape, device=device)

    def state(self) -> FoldState:
        """The state on the host (the torch fold's is copied from its device at the first read after a batch)."""
        if self._fold is None:  # no batch yet: an empty state
            self._fold = self._make_fold(torch.device("cpu"))
        return self._fold.state()

    @property
    def fold_used(self) -> str | None:
        """'numba' or 'torch' once a batch was folded; None before."""
        return None if self._fold is None else "numba" if isinstance(self._fold, NumbaFold) else "torch"

    def top(self, pool: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values [k, n], excerpt ids [k, n], activations [k, n, tokens]), best first (of equal
        values the lower id).

        Slots never filled (a pool with fewer than k excerpts) have id -1.
        """
        p, state = POOL_INDEX[pool], self.state()
        values, ids = torch.from_numpy(state.top_values[p].T), torch.from_numpy(state.top_ids[p].T)
        order = best_first(values, ids, dim=0)
        values = values.gather(0, order)
        ids = ids.gather(0, order).masked_fill(values == float("-inf"), -1)
        held = torch.from_numpy(state.top_acts[p]).transpose(0, 1)  # [k, n, tokens]
        return values, ids, held.gather(0, order[:, :, None].expand(-1, -1, held.shape[2]))

    def records(self, settings: RecordingSettings) -> pl.DataFrame:
        """Top, random and quantile-bin records as rows of the ``activation_records`` table."""
        random_acts = self.state().random_acts
        if np.isnan(random_acts).any():
            raise RuntimeError(f"layer {self.layer}: some random-sample excerpts were never seen")
        frames = [
            _rows(self.layer, self.neurons, pool, "top", None, *self.top(pool)[1:]).filter(pl.col("excerpt_id") >= 0)
            for pool in POOLS
        ]
        random_ids = torch.as_tensor(self.random_ids, dtype=torch.long)[:, None].expand(-1, len(self.neurons))
        frames.append(
            _rows(self.layer, self.neurons, SCORING_POOL, "random", None, random_ids, torch.from_numpy(random_acts))
        )
        frames += self._quantile_records(settings, random_ids, random_acts)
        return pl.concat([f for f in frames if not f.is_empty()], how="vertical")

    def _quantile_records(
        self, settings: RecordingSettings, random_ids: torch.Tensor, random_acts: np.ndarray
    ) -> list[pl.DataFrame]:
        """Bins of the per-excerpt maximum, estimated from the random sample (for viewing only)."""
        if not self.random_ids:
            return []
        maxima = random_acts.max(-1)  # [r, n]
        frames = []
        for lo, hi in settings.quantile_bins:
            bounds = np.quantile(maxima, [lo, hi], axis=0)  # [2, n]
            inside = (maxima >= bounds[0]) & (maxima <= bounds[1])
            for column, neuron in enumerate(self.neurons.tolist()):
                rows = np.flatnonzero(inside[:, column])[: settings.per_bin]
                if len(rows) == 0:
                    continue
                index = torch.as_tensor(rows)
                frames.append(
                    _rows(
                        self.layer,
                        torch.as_tensor([neuron]),
                        SCORING_POOL,
                        "quantile",
                        f"{lo}-{hi}",
                        random_ids[index, column : column + 1],
                        torch.from_numpy(random_acts[rows, column : column + 1]),
                    )
                )
        return frames

    def token_lookup(self) -> pl.DataFrame:
        """Mean activation of every (token, neuron) over the explanation pool: the lookup table."""
        state = self.state()
        seen = torch.from_numpy(state.token_counts > 0)
        counts = torch.from_numpy(state.token_counts)[seen]
        means = torch.from_numpy(state.token_sums)[seen] / counts[:, None]  # [tokens, n]
        n_tokens, n = means.shape
        return pl.DataFrame(
            {
                "layer": pl.Series([self.layer] * (n_tokens * n), dtype=pl.Int64),
                "neuron": pl.Series(self.neurons.repeat(n_tokens).tolist(), dtype=pl.Int64),
                "token_id": pl.Series(self.vocabulary[seen].repeat_interleave(n).tolist(), dtype=pl.Int64),
                "count": pl.Series(counts.repeat_interleave(n).tolist(), dtype=pl.Int64),
                "mean_activation": means.reshape(-1).numpy(),
            }
        ).sort("neuron", "token_id")

    def stats(self) -> pl.DataFrame:
        """Mean, variance, max, min and firing fraction over every recorded token."""
        state = self.state()
        n = state.n_tokens
        mean = state.total / n
        variance = np.clip(state.total_sq / n - mean**2, 0.0, None)
        return pl.DataFrame(
            {
                "layer": pl.Series([self.layer] * len(self.neurons), dtype=pl.Int64),
                "neuron": pl.Series(self.neurons.tolist(), dtype=pl.Int64),
                "mean": mean,
                "variance": variance,
                "max": state.maximum.astype(np.float64),
                "min": state.minimum.astype(np.float64),
                "frac_firing": state.firing / n,
                "n_tokens": pl.Series([n] * len(self.neurons), dtype=pl.Int64),
            }
        )


def _rows(
    layer: int,
    neurons: torch.Tensor,
    pool: str,
    kind: str,
    quantile_bin: str | None,
    ids: torch.Tensor,
    acts: torch.Tensor,
) -> pl.DataFrame:
    """Flatten [rank, neuron] ids and [rank, neuron, token] activations into table rows."""
    ranks, n = ids.shape
    return pl.DataFrame(
        {
            "layer": pl.Series([layer] * (ranks * n), dtype=pl.Int64),
            "neuron": pl.Series(neurons.repeat(ranks).tolist(), dtype=pl.Int64),
            "pool": [pool] * (ranks * n),
            "kind": [kind] * (ranks * n),
            "quantile_bin": pl.Series([quantile_bin] * (ranks * n), dtype=pl.String),
            "rank": pl.Series(np.repeat(np.arange(ranks), n), dtype=pl.Int64),
            "excerpt_id": pl.Series(ids.reshape(-1).tolist(), dtype=pl.Int64),
            "max_activation": acts.amax(-1).reshape(-1).double().numpy(),
            "activations": pl.Series(
                acts.reshape(ranks * n, acts.shape[-1]).double().numpy(), dtype=pl.List(pl.Float64)
            ),
        }
    ).sort("neuron", "rank")


RunModel = Callable[[torch.Tensor, dict[int, Callable[[torch.Tensor], None]], int], None]


def record(
    run_model: RunModel,
    excerpts: pl.DataFrame,
    neurons: dict[int, Sequence[int]],
    random_excerpt_ids: Sequence[int],
    *,
    start_token_id: int | None,
    batch_size: int = 16,
    top_k: int = 20,
    progress: Callable[[int, int], None] | None = None,
    polarity: str = POSITIVE,
    fold: str = "auto",
) -> dict[tuple[int, str], LayerRecorder]:
    """Run the subject model once over all excerpts and fold every requested layer, keyed (layer, polarity).

    ``run_model(tokens, hooks, stop_at_layer)`` runs a forward pass calling ``hooks[layer]``
    with that layer's post-nonlinearity activations. With ``start_token_id`` each excerpt is
    preceded by that token (the one the model saw between documents in training); its
    position is not recorded. ``fold`` picks the fold ('auto': numba on the CPU, torch on a GPU).
    """
    length = len(excerpts["token_ids"][0])
    vocabulary = torch.as_tensor(
        excerpts.filter(pl.col("pool") == EXPLANATION_POOL)["token_ids"].explode().unique().sort().to_list(),
        dtype=torch.long,
    )
    recorders = {
        (layer, sign): LayerRecorder(layer, selected, random_excerpt_ids, length, top_k, vocabulary, sign, fold)
        for layer, selected in neurons.items()
        for sign in polarities(polarity)
    }
    by_layer = {layer: [r for (at, _), r in recorders.items() if at == layer] for layer in neurons}
    stop_at = max(neurons) + 1
    offset = 0 if start_token_id is None else 1
    for start in range(0, len(excerpts), batch_size):
        batch = excerpts.slice(start, batch_size)
        excerpt_tokens = torch.as_tensor(np.stack(batch["token_ids"].to_numpy()), dtype=torch.long)
        tokens = excerpt_tokens
        if start_token_id is not None:
            tokens = torch.cat([torch.full((len(tokens), 1), start_token_id), tokens], dim=1)
        ids = torch.tensor(batch["excerpt_id"].to_list(), dtype=torch.long)
        pools = torch.tensor(batch["pool"].replace_strict(POOL_INDEX).to_list(), dtype=torch.int8)
        # Only explanation-pool tokens are looked up; the rest may land anywhere in range.
        slots = torch.searchsorted(vocabulary, excerpt_tokens).clamp_(0, max(len(vocabulary) - 1, 0))
        # Bind this batch's ids and pools now, not by reference to the loop variables.
        hooks = {
            layer: partial(_fold, layer_recorders, offset, ids, pools, slots)
            for layer, layer_recorders in by_layer.items()
        }
        run_model(tokens, hooks, stop_at)
        if progress is not None:
            progress(min(start + batch_size, len(excerpts)), len(excerpts))
    return recorders


def _fold(
    recorders: list[LayerRecorder],
    offset: int,
    ids: torch.Tensor,
    pools: torch.Tensor,
    slots: torch.Tensor,
    activations: torch.Tensor,
) -> None:
    """One layer's hook: fold the batch (start token skipped) into each of its polarities' recorders."""
    for recorder in recorders:
        recorder.update(activations, ids, pools, slots, offset)


@dataclass(frozen=True)
class NeuronSelection:
    """Which neurons of each layer to record: ``all``, ``first`` N, ``random`` N (seeded) or a ``list``."""

    mode: str = "random"
    n: int = 4
    seed: int = 0
    indices: tuple[int, ...] = ()

    def resolve(self, d_mlp: int, layer: int) -> list[int]:
        if self.mode == "all":
            return list(range(d_mlp))
        if self.mode == "list":
            bad = [i for i in self.indices if not 0 <= i < d_mlp]
            if bad or not self.indices:
                raise ValueError(
                    f"neuron indices {bad or '(none given)'} invalid: layer {layer} has neurons 0..{d_mlp - 1}"
                )
            return sorted(set(self.indices))
        if self.mode not in ("first", "random"):
            raise ValueError(f"neuron selection mode {self.mode!r} is not one of all, first, random, list")
        if not 0 < self.n <= d_mlp:
            raise ValueError(f"cannot select {self.n} neurons: layer {layer} has {d_mlp}")
        if self.mode == "first":
            return list(range(self.n))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + layer)
        return sorted(torch.randperm(d_mlp, generator=generator)[: self.n].tolist())


def random_sample(excerpts: pl.DataFrame, n: int, seed: int) -> list[int]:
    """Uniform sample of scoring-pool excerpt ids, the same for every neuron of a run, in a seeded
    random order: their ranks follow it, and the scoring and calibration sets take ranks in
    turn, so each is a uniform sample too (in corpus order each came from one part of the pool)."""
    pool = excerpts.filter(pl.col("pool") == SCORING_POOL)["excerpt_id"]
    if len(pool) < n:
        raise ValueError(f"the scoring pool has {len(pool)} excerpts; {n} random excerpts were asked for")
    return pool.sample(n, seed=seed, shuffle=True).to_list()


def record_tables(
    recorders: dict[tuple[int, str], LayerRecorder], settings: RecordingSettings
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The ``activation_records``, ``neuron_stats`` and ``token_lookup`` rows of every recorded
    layer and polarity; a ``negative`` row's activations are the negated ones."""

    def tagged(frames: list[pl.DataFrame]) -> pl.DataFrame:
        return pl.concat(
            [f.with_columns(polarity=pl.lit(r.polarity)) for f, r in zip(frames, recorders.values(), strict=True)],
            how="vertical",
        )

    records = tagged([r.records(settings) for r in recorders.values()])
    stats = tagged([r.stats() for r in recorders.values()])
    lookup = tagged([r.token_lookup() for r in recorders.values()])
    return records, stats, lookup
