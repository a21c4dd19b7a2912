"""The next-token view of a neuron (method.md §7): each activation paired with the token after it.

Some later-layer neurons encode what comes *next*. Showing the explainer (next token,
activation) pairs, and simulating on the next tokens, tests that reading. An excerpt's
last activation has no next token inside the excerpt, so the view is one position shorter:
next-token scores cover 63 of every 64 tokens that the other methods score.
"""

from __future__ import annotations

import polars as pl


def next_token_view(activations: pl.DataFrame, excerpts: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``activations`` (any table with an ``activations`` list per excerpt) without each last
    position, and ``excerpts`` with ``tokens`` starting one later: position i pairs activation i
    with token i + 1."""
    shortened = activations.with_columns(pl.col("activations").list.slice(0, pl.col("activations").list.len() - 1))
    if "max_activation" in shortened.columns:
        shortened = shortened.with_columns(max_activation=pl.col("activations").list.max())
    return shortened, excerpts.with_columns(pl.col("tokens").list.slice(1))
