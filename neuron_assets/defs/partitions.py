"""Layer partitions: one per layer of the subject model, keyed ``layer-0``, ``layer-1``, ...

The key names the dimension so the UI's partition picker and partition pages say what a
partition is. Storage stays keyed by the layer number (``<table>/<layer>.parquet``).
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg
import polars as pl

LAYER_KEY_PREFIX = "layer-"


def layer_partitions(n_layers: int) -> dg.StaticPartitionsDefinition:
    """One partition per layer, in layer order (so a backfill range ``layer-3...layer-5`` is layers 3-5)."""
    return dg.StaticPartitionsDefinition([layer_key(layer) for layer in range(n_layers)])


def layer_key(layer: int) -> str:
    return f"{LAYER_KEY_PREFIX}{layer}"


def layer_of(key: str) -> int:
    """The layer of a partition key; a key that is not ``layer-N`` is an error naming it."""
    number = key.removeprefix(LAYER_KEY_PREFIX)
    if not key.startswith(LAYER_KEY_PREFIX) or not number.isdigit():
        raise ValueError(f"partition key {key!r} is not a layer partition (expected e.g. 'layer-3')")
    return int(number)


def stored_partitions(keys: Iterable[str]) -> list[str]:
    """The storage partitions (layer numbers as text, in layer order) of Dagster partition keys."""
    return [str(layer) for layer in sorted(layer_of(key) for key in keys)]


def layer_key_column() -> pl.Expr:
    """The partition key of each row, from its ``layer`` column."""
    return pl.concat_str(pl.lit(LAYER_KEY_PREFIX), pl.col("layer").cast(pl.String))
