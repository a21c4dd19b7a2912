"""Streaming activation recording (method.md §2).

One forward pass over the corpus serves every requested layer: a hook on each layer's
``blocks.{L}.mlp.hook_post`` folds the batch into that layer's ``LayerRecorder`` and the
pass stops after the deepest requested layer. A recorder keeps, per selected neuron,
the top-k excerpts of each pool by maximum activation (with their per-token
activations), the activations on a fixed random sample of scoring excerpts, running
sums for the statistics, and per-token sums over the explanation pool for the token
lookup-table baseline (method.md §6), so memory grows with neurons x (k + distinct
tokens), never with the corpus.

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

from neuron_assets.sampling.excerpts import EXPLANATION_POOL, SCORING_POOL

POOLS = (EXPLANATION_POOL, SCORING_POOL)
POSITIVE, NEGATIVE = "positive", "negative"
POLARITY_SETTINGS = {POSITIVE: (POSITIVE,), NEGATIVE: (NEGATIVE,), "both": (POSITIVE, NEGATIVE)}


def polarities(setting: str) -> tuple[str, ...]:
    """The polarities a recording setting asks for: 'positive', 'negative' or 'both'."""
    if setting not in POLARITY_SETTINGS:
        raise ValueError(f"polarity {setting!r} is not one of {list(POLARITY_SETTINGS)}")
    return POLARITY_SETTINGS[setting]


@dataclass(frozen=True)
class RecordingSettings:
    """How the quantile-bin records for viewing are drawn from the random sample."""

    quantile_bins: tuple[tuple[float, float], ...] = ((0.5, 0.9), (0.9, 0.99))
    per_bin: int = 5


class LayerRecorder:
    """Folds batches of one layer's activations into top-k, random-sample and statistics state."""

    def __init__(
        self,
        layer: int,
        neurons: Sequence[int],
        random_excerpt_ids: Sequence[int],
        excerpt_length: int,
        top_k: int,
        vocabulary: torch.Tensor,
        polarity: str = POSITIVE,
    ) -> None:
        self.layer = layer
        self.polarity = polarity
        self.neurons = torch.as_tensor(list(neurons), dtype=torch.long)
        n = len(self.neurons)
        # A selection that is a prefix of the layer is a view, not a copy, of each batch.
        self._prefix = bool(torch.equal(self.neurons, torch.arange(n)))
        self.top_k = top_k
        # k unordered slots per neuron; -inf marks a slot not filled yet.
        self.top_values = {p: torch.full((top_k, n), float("-inf")) for p in POOLS}
        self.top_ids = {p: torch.full((top_k, n), -1, dtype=torch.long) for p in POOLS}
        self.top_acts = {p: torch.zeros(top_k, excerpt_length, n) for p in POOLS}
        self.random_ids = list(random_excerpt_ids)
        self._random_slot = {e: i for i, e in enumerate(self.random_ids)}
        self.random_acts = torch.full((len(self.random_ids), n, excerpt_length), float("nan"))
        self.total = torch.zeros(n, dtype=torch.float64)
        self.total_sq = torch.zeros(n, dtype=torch.float64)
        self.maximum = torch.full((n,), float("-inf"))
        self.minimum = torch.full((n,), float("inf"))
        self.firing = torch.zeros(n, dtype=torch.long)
        self.n_tokens = 0
        # Sorted ids of the explanation pool's distinct tokens, and each one's sums there.
        self.vocabulary = vocabulary
        self.token_sums = torch.zeros(len(vocabulary), n, dtype=torch.float64)
        self.token_counts = torch.zeros(len(vocabulary), dtype=torch.long)

    def update(
        self, activations: torch.Tensor, excerpt_ids: torch.Tensor, is_scoring: torch.Tensor, token_ids: torch.Tensor
    ) -> None:
        """Fold a batch: ``activations`` [batch, tokens, d_mlp], ids and pool flags [batch], token ids [batch, tokens]."""
        n = len(self.neurons)
        acts = activations[..., :n] if self._prefix else activations.index_select(-1, self.neurons)
        acts = acts.float() if self.polarity == POSITIVE else -acts.float()  # [b, t, n]
        flat = acts.reshape(-1, n)
        self.total += flat.sum(0).double()
        self.total_sq += (flat * flat).sum(0).double()
        self.minimum = torch.minimum(self.minimum, flat.amin(0))
        self.firing += (flat > 0).sum(0)
        self.n_tokens += flat.shape[0]
        maxima = acts.amax(1)  # [b, n]
        self.maximum = torch.maximum(self.maximum, maxima.amax(0))
        for pool, rows in ((SCORING_POOL, is_scoring), (EXPLANATION_POOL, ~is_scoring)):
            if rows.any():
                self._merge_top(pool, maxima.masked_fill(~rows[:, None], float("-inf")), acts, excerpt_ids)
        if (~is_scoring).any():
            slots = torch.searchsorted(self.vocabulary, token_ids[~is_scoring].reshape(-1))
            self.token_sums.index_add_(0, slots, acts[~is_scoring].reshape(-1, n).double())
            self.token_counts.index_add_(0, slots, torch.ones_like(slots))
        for row, excerpt_id in enumerate(excerpt_ids.tolist()):
            slot = self._random_slot.get(excerpt_id)
            if slot is not None:
                self.random_acts[slot] = acts[row].T

    def _merge_top(self, pool: str, maxima: torch.Tensor, acts: torch.Tensor, ids: torch.Tensor) -> None:
        """Merge a batch (other-pool rows masked to -inf) into the pool's top-k slots.

        Only the slots whose excerpt is pushed out are rewritten, so the data moved per
        batch is the number of changes, which shrinks as the stream goes on.
        """
        held = self.top_values[pool]
        k = held.shape[0]
        # Only neurons whose weakest held excerpt is beaten by this batch can change.
        columns = (maxima > held.amin(0)).any(0).nonzero().squeeze(1)
        if len(columns) == 0:
            return
        candidates = maxima[:, columns]
        best = torch.cat([held[:, columns], candidates]).topk(k, dim=0).indices  # [k, c]
        is_new = best >= k
        kept = torch.zeros(k, len(columns), dtype=torch.uint8)
        kept.scatter_reduce_(0, best.clamp(max=k - 1), (~is_new).to(torch.uint8), reduce="amax")
        free_slots = kept.argsort(dim=0, stable=True)  # per neuron: dropped slots first
        new_rows = torch.where(is_new, best - k, maxima.shape[0]).sort(dim=0).values  # batch rows first
        pair, column = (torch.arange(k)[:, None] < is_new.sum(0)[None, :]).nonzero(as_tuple=True)
        slot, row, neuron = free_slots[pair, column], new_rows[pair, column], columns[column]
        held[slot, neuron] = maxima[row, neuron]
        self.top_ids[pool][slot, neuron] = ids[row]
        self.top_acts[pool][slot, :, neuron] = acts[row, :, neuron]

    def top(self, pool: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values [k, n], excerpt ids [k, n], activations [k, n, tokens]), best first.

        Slots never filled (a pool with fewer than k excerpts) have id -1.
        """
        values, order = self.top_values[pool].sort(dim=0, descending=True)
        ids = self.top_ids[pool].gather(0, order).masked_fill(values == float("-inf"), -1)
        acts = self.top_acts[pool].gather(0, order[:, None, :].expand(-1, self.top_acts[pool].shape[1], -1))
        return values, ids, acts.transpose(1, 2)

    def records(self, settings: RecordingSettings) -> pl.DataFrame:
        """Top, random and quantile-bin records as rows of the ``activation_records`` table."""
        if torch.isnan(self.random_acts).any():
            raise RuntimeError(f"layer {self.layer}: some random-sample excerpts were never seen")
        frames = [
            _rows(self.layer, self.neurons, pool, "top", None, *self.top(pool)[1:]).filter(pl.col("excerpt_id") >= 0)
            for pool in POOLS
        ]
        random_ids = torch.as_tensor(self.random_ids, dtype=torch.long)[:, None].expand(
            -1, len(self.neurons)
        )
        frames.append(_rows(self.layer, self.neurons, SCORING_POOL, "random", None, random_ids, self.random_acts))
        frames += self._quantile_records(settings, random_ids)
        return pl.concat([f for f in frames if not f.is_empty()], how="vertical")

    def _quantile_records(self, settings: RecordingSettings, random_ids: torch.Tensor) -> list[pl.DataFrame]:
        """Bins of the per-excerpt maximum, estimated from the random sample (for viewing only)."""
        if not self.random_ids:
            return []
        maxima = self.random_acts.amax(-1).numpy()  # [r, n]
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
                        self.random_acts[index, column : column + 1],
                    )
                )
        return frames

    def token_lookup(self) -> pl.DataFrame:
        """Mean activation of every (token, neuron) over the explanation pool: the lookup table."""
        seen = self.token_counts > 0
        means = self.token_sums[seen] / self.token_counts[seen, None]  # [tokens, n]
        n_tokens, n = means.shape
        return pl.DataFrame(
            {
                "layer": pl.Series([self.layer] * (n_tokens * n), dtype=pl.Int64),
                "neuron": pl.Series(self.neurons.repeat(n_tokens).tolist(), dtype=pl.Int64),
                "token_id": pl.Series(self.vocabulary[seen].repeat_interleave(n).tolist(), dtype=pl.Int64),
                "count": pl.Series(self.token_counts[seen].repeat_interleave(n).tolist(), dtype=pl.Int64),
                "mean_activation": means.reshape(-1).numpy(),
            }
        ).sort("neuron", "token_id")

    def stats(self) -> pl.DataFrame:
        """Mean, variance, max, min and firing fraction over every recorded token."""
        n = self.n_tokens
        mean = self.total / n
        variance = (self.total_sq / n - mean**2).clamp(min=0.0)
        return pl.DataFrame(
            {
                "layer": pl.Series([self.layer] * len(self.neurons), dtype=pl.Int64),
                "neuron": pl.Series(self.neurons.tolist(), dtype=pl.Int64),
                "mean": mean.numpy(),
                "variance": variance.numpy(),
                "max": self.maximum.double().numpy(),
                "min": self.minimum.double().numpy(),
                "frac_firing": (self.firing.double() / n).numpy(),
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
            "activations": pl.Series(acts.reshape(ranks * n, acts.shape[-1]).double().numpy(), dtype=pl.List(pl.Float64)),
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
) -> dict[tuple[int, str], LayerRecorder]:
    """Run the subject model once over all excerpts and fold every requested layer, keyed (layer, polarity).

    ``run_model(tokens, hooks, stop_at_layer)`` runs a forward pass calling ``hooks[layer]``
    with that layer's post-nonlinearity activations. With ``start_token_id`` each excerpt is
    preceded by that token (the one the model saw between documents in training); its
    position is not recorded.
    """
    length = len(excerpts["token_ids"][0])
    vocabulary = torch.as_tensor(
        excerpts.filter(pl.col("pool") == EXPLANATION_POOL)["token_ids"].explode().unique().sort().to_list(),
        dtype=torch.long,
    )
    recorders = {
        (layer, sign): LayerRecorder(layer, selected, random_excerpt_ids, length, top_k, vocabulary, sign)
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
        is_scoring = torch.tensor((batch["pool"] == SCORING_POOL).to_list())
        # Bind this batch's ids and pools now, not by reference to the loop variables.
        hooks = {
            layer: partial(_fold, layer_recorders, offset, ids, is_scoring, excerpt_tokens)
            for layer, layer_recorders in by_layer.items()
        }
        run_model(tokens, hooks, stop_at)
        if progress is not None:
            progress(min(start + batch_size, len(excerpts)), len(excerpts))
    return recorders


def _fold(
    recorders: list[LayerRecorder], offset: int, ids: torch.Tensor, is_scoring: torch.Tensor, tokens: torch.Tensor,
    activations: torch.Tensor,
) -> None:
    """One layer's hook: fold the batch (start token dropped) into each of its polarities' recorders."""
    for recorder in recorders:
        recorder.update(activations[:, offset:], ids, is_scoring, tokens)


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
    """Uniform sample of scoring-pool excerpt ids, the same for every neuron of a run."""
    pool = excerpts.filter(pl.col("pool") == SCORING_POOL)["excerpt_id"]
    if len(pool) < n:
        raise ValueError(f"the scoring pool has {len(pool)} excerpts; {n} random excerpts were asked for")
    return sorted(pool.sample(n, seed=seed).to_list())


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
