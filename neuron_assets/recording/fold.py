"""The per-batch fold of one layer's activations, compiled: every statistic in one read.

Recording every neuron must cost little beside the forward pass itself (``make bench``).
Done as separate tensor operations on the CPU, the statistics, per-excerpt maxima, token
sums and top-k merge read each layer's [batch, tokens, neurons] activations a dozen times
and cost more than half a forward pass on two cores. This kernel reads an excerpt's rows
once for the running statistics, the explanation-pool token sums and the excerpt's
maximum per neuron, and right after, while those rows are still in cache, copies the
excerpt's tokens into the top-k of each neuron where it beats the weakest one held.
Excerpts rank by maximum, then by lower id: a total order, so the top-k is the same
whatever order the excerpts come in, and the same as ``torch_fold``'s, ties included.

numba compiles it for the CPU it runs on at first use (cached on disk per CPU), so
nothing is tuned to another host. Loops run over slices indexed from 0: in that form
LLVM vectorizes them (about 7x faster here than indexing the whole arrays from ``lo``).

``NumbaFold`` holds one recorder's state as numpy arrays and folds each batch with this
kernel, its neurons split over threads: the CPU's fold. ``torch_fold.TorchFold`` holds the
same state on the activations' device. Both give a ``FoldState``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from functools import cache

import numpy as np
import torch
from numba import njit

EXPLANATION, SCORING = 0, 1  # index of a pool in the stacked top-k arrays
BLOCK = 16  # neurons in one 64-byte cache line of float32: thread ranges start on one


# Fast-math without "no NaNs, no infinities": -inf marks empty slots and excerpt maxima start there.
@njit(cache=True, nogil=True, fastmath={"nsz", "arcp", "contract", "reassoc"})
def fold_batch(
    acts: np.ndarray,  # float32 [batch, offset + tokens, >= hi]
    offset: int,  # leading positions not recorded (the start token)
    lo: int,  # this call folds neurons lo..hi-1 (columns of ``acts``), so calls on
    hi: int,  # disjoint ranges can run at once on several threads
    count_tokens: bool,  # exactly one call per batch counts the tokens
    sign: np.float32,  # +1 records the activations, -1 their negation (the negative side)
    pool: np.ndarray,  # int8 [batch]: EXPLANATION or SCORING
    excerpt_ids: np.ndarray,  # int64 [batch]
    slots: np.ndarray,  # int64 [batch, tokens]: each token's row in ``token_sums``
    total: np.ndarray,  # float64 [n]
    total_sq: np.ndarray,  # float64 [n]
    minimum: np.ndarray,  # float32 [n]
    maximum: np.ndarray,  # float32 [n]
    firing: np.ndarray,  # int64 [n]
    token_sums: np.ndarray,  # float64 [vocabulary, n], explanation pool only
    token_counts: np.ndarray,  # int64 [vocabulary]
    top_values: np.ndarray,  # float32 [2, n, k]: -inf in a slot never filled
    top_ids: np.ndarray,  # int64 [2, n, k]
    top_acts: np.ndarray,  # float32 [2, n, k, tokens]: a held excerpt's tokens lie together
) -> None:
    """Fold one batch into the state arrays in place (see ``LayerRecorder``)."""
    batch, width = acts.shape[0], acts.shape[1]
    m = hi - lo
    # Per batch, float32 partial sums (at most a few thousand terms) go into float64 totals.
    part = np.zeros(m, np.float32)
    part_sq = np.zeros(m, np.float32)
    fires = np.zeros(m, np.int32)
    low = minimum[lo:hi]
    high = maximum[lo:hi]
    excerpt_max = np.empty(m, np.float32)
    # Per pool and neuron, the weakest held value and its slot: what a new excerpt must beat.
    weakest = np.empty((2, m), np.float32)
    weakest_slot = np.empty((2, m), np.int64)
    for p in range(2):
        for j in range(m):
            weakest_slot[p, j] = _weakest(top_values[p, lo + j], top_ids[p, lo + j])
            weakest[p, j] = top_values[p, lo + j, weakest_slot[p, j]]
    changed = np.empty(m, np.int64)
    for e in range(batch):
        excerpt_max[:] = -np.inf
        in_explanation = pool[e] == EXPLANATION
        for t in range(offset, width):
            row = acts[e, t, lo:hi]
            for j in range(m):
                x = sign * row[j]
                part[j] += x
                part_sq[j] += x * x
                low[j] = min(low[j], x)
                excerpt_max[j] = max(excerpt_max[j], x)
                fires[j] += x > 0
            if in_explanation:
                slot = slots[e, t - offset]
                if count_tokens:
                    token_counts[slot] += 1
                sums = token_sums[slot, lo:hi]
                for j in range(m):
                    sums[j] += sign * row[j]
        p = pool[e]
        beaten = weakest[p]
        excerpt_id = excerpt_ids[e]
        count = 0
        for j in range(m):
            high[j] = max(high[j], excerpt_max[j])
            if excerpt_max[j] > beaten[j] or (
                excerpt_max[j] == beaten[j] and excerpt_id < top_ids[p, lo + j, weakest_slot[p, j]]
            ):
                changed[count] = j
                count += 1
        # The excerpt's rows were just read, so copying its columns reads from cache.
        for c in range(count):
            j = changed[c]
            neuron, slot = lo + j, weakest_slot[p, j]
            top_values[p, neuron, slot] = excerpt_max[j]
            top_ids[p, neuron, slot] = excerpt_id
            held = top_acts[p, neuron, slot]
            for t in range(offset, width):
                held[t - offset] = sign * acts[e, t, neuron]
            weakest_slot[p, j] = _weakest(top_values[p, neuron], top_ids[p, neuron])
            beaten[j] = top_values[p, neuron, weakest_slot[p, j]]
    total[lo:hi] += part
    total_sq[lo:hi] += part_sq
    firing[lo:hi] += fires


@njit(cache=True, nogil=True, inline="always")
def _weakest(values: np.ndarray, ids: np.ndarray) -> int:
    """The slot a new excerpt replaces: the lowest held value (an empty slot holds -inf), of
    equal ones the higher id."""
    slot = 0
    for s in range(1, len(values)):
        if values[s] < values[slot] or (values[s] == values[slot] and ids[s] > ids[slot]):
            slot = s
    return slot


@dataclass(frozen=True)
class FoldState:
    """One recorder's state on the host, as either fold holds it (see ``LayerRecorder``).

    Top-k slots per pool and neuron may be in any order: -inf and id -1 in a slot never
    filled. ``random_acts`` is NaN for a random excerpt not seen yet.
    """

    top_values: np.ndarray  # float32 [2, n, k]
    top_ids: np.ndarray  # int64 [2, n, k]
    top_acts: np.ndarray  # float32 [2, n, k, tokens]
    random_acts: np.ndarray  # float32 [random excerpts, n, tokens]
    total: np.ndarray  # float64 [n]
    total_sq: np.ndarray  # float64 [n]
    minimum: np.ndarray  # float32 [n]
    maximum: np.ndarray  # float32 [n]
    firing: np.ndarray  # int64 [n]
    token_sums: np.ndarray  # float64 [vocabulary, n]
    token_counts: np.ndarray  # int64 [vocabulary]
    n_tokens: int


STATE_ARRAYS = tuple(f.name for f in fields(FoldState) if f.name != "n_tokens")  # as both folds name them


def state_layout(
    n: int, n_random: int, top_k: int, excerpt_length: int, vocabulary_size: int
) -> dict[str, tuple[tuple[int, ...], str, float]]:
    """Each state array's shape, dtype name (numpy's and torch's alike) and starting value, in
    ``STATE_ARRAYS`` order: both folds allocate from it. -inf marks a top-k slot never filled,
    NaN a random excerpt not seen yet."""
    layout = {
        "top_values": ((2, n, top_k), "float32", -np.inf),
        "top_ids": ((2, n, top_k), "int64", -1),
        "top_acts": ((2, n, top_k, excerpt_length), "float32", 0.0),
        "random_acts": ((n_random, n, excerpt_length), "float32", np.nan),
        "total": ((n,), "float64", 0.0),
        "total_sq": ((n,), "float64", 0.0),
        "minimum": ((n,), "float32", np.inf),
        "maximum": ((n,), "float32", -np.inf),
        "firing": ((n,), "int64", 0),
        "token_sums": ((vocabulary_size, n), "float64", 0.0),
        "token_counts": ((vocabulary_size,), "int64", 0),
    }
    assert tuple(layout) == STATE_ARRAYS
    return layout


def best_first(values: torch.Tensor, ids: torch.Tensor, dim: int) -> torch.Tensor:
    """The indexes along ``dim`` that put excerpts best first: highest value, then lowest id."""
    by_id = ids.argsort(dim=dim, stable=True)
    by_value = values.gather(dim, by_id).argsort(dim=dim, descending=True, stable=True)
    return by_id.gather(dim, by_value)


class NumbaFold:
    """The fold on the CPU: numpy state that ``fold_batch`` updates in place, neuron ranges on threads.

    Activations on another device are copied to the host batch by batch.
    """

    def __init__(
        self,
        neurons: torch.Tensor,
        random_excerpt_ids: Sequence[int],
        excerpt_length: int,
        top_k: int,
        vocabulary_size: int,
        sign: float,
    ) -> None:
        n = len(neurons)
        self._neurons = neurons
        # A selection that is a prefix of the layer is read in place, not copied out of each batch.
        self._prefix = bool(torch.equal(neurons, torch.arange(n)))
        self._sign = np.float32(sign)
        self._random_slot = {e: i for i, e in enumerate(random_excerpt_ids)}
        layout = state_layout(n, len(self._random_slot), top_k, excerpt_length, vocabulary_size)
        for name, (shape, dtype, start) in layout.items():
            setattr(self, name, np.full(shape, start, dtype=dtype))
        self.n_tokens = 0

    def update(
        self,
        activations: torch.Tensor,
        excerpt_ids: torch.Tensor,
        pools: torch.Tensor,
        slots: torch.Tensor,
        offset: int,
    ) -> None:
        """Fold a batch (see ``LayerRecorder.update``)."""
        n = len(self._neurons)
        acts = activations.detach().to("cpu", torch.float32)
        if not self._prefix:
            acts = acts.index_select(-1, self._neurons)
        acts = np.ascontiguousarray(acts.numpy())
        # The fold is compiled and lets go of the GIL: disjoint neuron ranges run on threads.
        calls = [
            (
                acts,
                offset,
                lo,
                hi,
                lo == 0,
                self._sign,
                pools.numpy(),
                excerpt_ids.numpy(),
                slots.numpy(),
                self.total,
                self.total_sq,
                self.minimum,
                self.maximum,
                self.firing,
                self.token_sums,
                self.token_counts,
                self.top_values,
                self.top_ids,
                self.top_acts,
            )
            for lo, hi in ranges(n, torch.get_num_threads())
        ]
        others = [_fold_threads().submit(fold_batch, *call) for call in calls[1:]]
        fold_batch(*calls[0])
        for other in others:
            other.result()
        self.n_tokens += acts.shape[0] * (acts.shape[1] - offset)
        for row, excerpt_id in enumerate(excerpt_ids.tolist()):
            slot = self._random_slot.get(excerpt_id)
            if slot is not None:
                self.random_acts[slot] = self._sign * acts[row, offset:, :n].T

    def state(self) -> FoldState:
        """The live arrays (no copy)."""
        return FoldState(*(getattr(self, name) for name in STATE_ARRAYS), n_tokens=self.n_tokens)


def ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """``n`` neurons cut into at most ``parts`` ranges of whole cache lines (16 float32), at least 256 each."""
    parts = max(1, min(parts, n // 256))
    step = -(-n // parts // BLOCK) * BLOCK
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


@cache
def _fold_threads() -> ThreadPoolExecutor:
    """The threads that fold a batch's other neuron ranges while the caller folds the first."""
    return ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 1) - 1), thread_name_prefix="fold")
