"""The fold as torch operations on the activations' device: what recording uses on a GPU.

The state of ``fold.NumbaFold`` (top-k per pool and neuron with the excerpts' per-token
activations, running statistics, explanation-pool token sums, the random excerpts'
activations) lives here as tensors on the device the activations come from, and each
batch is folded by whole-tensor operations that never wait on the device: the top-k
merge sorts the held values beside the batch's per-excerpt maxima and gathers ids and
activations, token sums are one ``index_add_``. Nothing goes to the host until the state
is read (``state()``), once per recording, instead of every layer's activations every batch.

Excerpts rank as in the numba kernel: by maximum, then by lower id (``best_first``), so
both folds keep the same top-k, ties included. Sums are float64 (totals, squares and
token sums); the numba kernel sums each batch in float32 first, so those differ from
its sums in float32's last digits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from neuron_assets.recording.fold import EXPLANATION, SCORING, STATE_ARRAYS, FoldState, best_first, state_layout


class TorchFold:
    """One recorder's fold state as tensors on ``device``; ``state()`` copies it to the host."""

    def __init__(
        self,
        neurons: torch.Tensor,
        random_excerpt_ids: Sequence[int],
        excerpt_length: int,
        top_k: int,
        vocabulary_size: int,
        sign: float,
        device: torch.device,
    ) -> None:
        n, r = len(neurons), len(random_excerpt_ids)
        self.device = torch.device(device)
        self._n = n
        self._prefix = bool(torch.equal(neurons, torch.arange(n)))
        self._neurons = neurons.to(self.device)
        self._negate = sign < 0
        # Random excerpt ids sorted (on the host), and each one's row of ``random_acts``.
        ids = torch.as_tensor(list(random_excerpt_ids), dtype=torch.long)
        self._random_ids, self._random_slot = ids.sort()
        # State made in a hook (inference mode) must stay an ordinary tensor, updatable anywhere.
        with torch.inference_mode(False):
            for name, (shape, dtype, start) in state_layout(n, r, top_k, excerpt_length, vocabulary_size).items():
                setattr(self, name, torch.full(shape, start, dtype=getattr(torch, dtype), device=self.device))
        self.n_tokens = 0
        self._host: FoldState | None = None

    def update(
        self,
        activations: torch.Tensor,
        excerpt_ids: torch.Tensor,
        pools: torch.Tensor,
        slots: torch.Tensor,
        offset: int,
    ) -> None:
        """Fold a batch (see ``LayerRecorder.update``); ids, pools and slots are on the host."""
        self._host = None
        acts = activations.detach()
        acts = acts[..., : self._n] if self._prefix else acts.index_select(-1, self._neurons)
        x = acts[:, offset:].to(self.device, torch.float32)  # [batch, tokens, n]
        if self._negate:
            x = -x
        batch = _batch_index(excerpt_ids, pools, slots, self.device)
        self.n_tokens += x.shape[0] * x.shape[1]
        self.total += x.sum((0, 1), dtype=torch.float64)
        self.total_sq += x.square().sum((0, 1), dtype=torch.float64)
        torch.minimum(self.minimum, x.amin((0, 1)), out=self.minimum)
        excerpt_max = x.amax(1)  # [batch, n]
        torch.maximum(self.maximum, excerpt_max.amax(0), out=self.maximum)
        self.firing += (x > 0).sum((0, 1))
        for pool, rows, ids in batch.pools:
            self._merge(pool, excerpt_max.index_select(0, rows), ids, x.index_select(0, rows))
        if batch.explanation_rows is not None:
            tokens = x.index_select(0, batch.explanation_rows).reshape(-1, self._n)
            self.token_sums.index_add_(0, batch.explanation_slots, tokens.double())
            self.token_counts.index_add_(0, batch.explanation_slots, batch.ones)
        self._keep_random(excerpt_ids, x)

    def _merge(self, pool: int, maxima: torch.Tensor, ids: torch.Tensor, acts: torch.Tensor) -> None:
        """Keep the k best of the held excerpts and the batch's ones of ``pool``: maxima [b, n],
        ids [b], acts [b, tokens, n]."""
        held = self.top_values[pool]  # [n, k]
        n, k = held.shape
        values = torch.cat([held, maxima.T], dim=1)  # [n, k + b]
        every_id = torch.cat([self.top_ids[pool], ids.expand(n, -1)], dim=1)
        order = best_first(values, every_id, dim=1)[:, :k]
        self.top_values[pool] = values.gather(1, order)
        self.top_ids[pool] = every_id.gather(1, order)
        tokens = torch.cat([self.top_acts[pool], acts.permute(2, 0, 1)], dim=1)  # [n, k + b, tokens]
        self.top_acts[pool] = tokens.gather(1, order[:, :, None].expand(-1, -1, tokens.shape[2]))

    def _keep_random(self, excerpt_ids: torch.Tensor, x: torch.Tensor) -> None:
        """Copy the rows of the random-sample excerpts in the batch, found on the host."""
        if not len(self._random_ids):
            return
        at = torch.searchsorted(self._random_ids, excerpt_ids).clamp_(max=len(self._random_ids) - 1)
        hit = self._random_ids[at] == excerpt_ids
        if not hit.any():
            return
        rows = hit.nonzero().squeeze(1).to(self.device, non_blocking=True)
        where = self._random_slot[at[hit]].to(self.device, non_blocking=True)
        self.random_acts[where] = x.index_select(0, rows).transpose(1, 2)

    def state(self) -> FoldState:
        """The state on the host: copied at the first read after a batch, then reused."""
        if self._host is None:
            host = [getattr(self, name).cpu().numpy() for name in STATE_ARRAYS]
            self._host = FoldState(*host, n_tokens=self.n_tokens)
        return self._host


@dataclass(frozen=True)
class _BatchIndex:
    """One batch's rows of each pool, their excerpt ids and the explanation pool's token slots,
    on the device: made once per batch and device, shared by every layer and polarity."""

    source: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # the host tensors it was made from
    device: torch.device
    pools: tuple[tuple[int, torch.Tensor, torch.Tensor], ...]  # (pool, rows, excerpt ids): pools in the batch
    explanation_rows: torch.Tensor | None  # None: no explanation excerpt in the batch
    explanation_slots: torch.Tensor | None  # [explanation rows x tokens]: rows of ``token_sums``
    ones: torch.Tensor | None  # int64 ones beside ``explanation_slots``, for the token counts


_last: list[_BatchIndex] = []  # the latest batch's index; holding its tensors keeps their ids unique


def _batch_index(
    excerpt_ids: torch.Tensor, pools: torch.Tensor, slots: torch.Tensor, device: torch.device
) -> _BatchIndex:
    """The index of this batch, reused while the same host tensors come back (the next layers).

    Copies to the device do not wait for its queue (``non_blocking``): from pageable host
    memory, CUDA has read the source when the call returns.
    """
    source = (excerpt_ids, pools, slots)
    if _last and _last[0].device == device and all(a is b for a, b in zip(_last[0].source, source, strict=True)):
        return _last[0]

    def on_device(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, non_blocking=True)

    selected = []
    for pool in (EXPLANATION, SCORING):
        rows = (pools == pool).nonzero().squeeze(1)
        if len(rows):
            selected.append((pool, on_device(rows), on_device(excerpt_ids[rows])))
    explanation_rows = explanation_slots = ones = None
    if selected and selected[0][0] == EXPLANATION:
        flat = slots[pools == EXPLANATION].reshape(-1)
        explanation_rows, explanation_slots = selected[0][1], on_device(flat)
        ones = torch.ones(len(flat), dtype=torch.long, device=device)
    index = _BatchIndex(source, device, tuple(selected), explanation_rows, explanation_slots, ones)
    _last[:] = [index]
    return index
