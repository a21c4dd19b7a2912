"""The local server's prompt cache, bounded by the bytes it really holds.

llama-cpp-python's ``LlamaRAMCache`` evicts by the llama.cpp state size alone, but with
``logits_all`` (which echoed log-probabilities need) every saved state also carries a copy
of the logits of every position: prompt length x vocabulary x 4 bytes, about 300 MB for one
all-at-once simulation prompt of SmolLM2. Counted as a few MB, a 2 GiB cache grew without
bound. ``BoundedRAMCache`` counts the logits, the token ids and the llama.cpp state, and
evicts the least recently used states until the total is within its capacity; a state
larger than the capacity on its own is not kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_cpp.llama_cache import LlamaRAMCache


def state_bytes(state: Any) -> int:
    """What a saved ``LlamaState`` holds in memory: llama.cpp's state, the logits and the token ids."""
    return int(state.llama_state_size) + int(state.scores.nbytes) + int(state.input_ids.nbytes)


class BoundedRAMCache(LlamaRAMCache):
    """``LlamaRAMCache`` whose size is the bytes its states really hold (``state_bytes``)."""

    @property
    def cache_size(self) -> int:
        return sum(state_bytes(state) for state in self.cache_state.values())

    def __setitem__(self, key: Sequence[int], value: Any) -> None:
        key = tuple(key)
        self.cache_state.pop(key, None)
        size = state_bytes(value)
        if size > self.capacity_bytes:
            return
        while self.cache_state and self.cache_size + size > self.capacity_bytes:
            self.cache_state.popitem(last=False)
        self.cache_state[key] = value
