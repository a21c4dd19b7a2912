"""What every domain's assets share: partition keys, column schemas, UI metadata helpers."""

from collections.abc import Callable
from typing import Any

import dagster as dg
import polars as pl

from neuron_assets.defs.partitions import layer_of

# Layer-partitioned assets backfill as one run: one forward pass over the corpus records every
# requested layer, and one LLM server serves all of them.
SINGLE_RUN = dg.BackfillPolicy.single_run()


def requested_layers(context: dg.AssetExecutionContext) -> list[int]:
    return sorted(layer_of(key) for key in context.partition_keys)


def preview(frame: pl.DataFrame, score_column: str, viewer: str | None = None, n: int = 3) -> str:
    """Markdown table of the best and worst rows by ``score_column`` (undefined scores apart);
    with ``viewer`` (the experiment's viewer address) each neuron links to its viewer page."""
    defined = frame.filter(pl.col(score_column).is_not_null()).sort(score_column, descending=True)
    shown = (
        pl.concat([defined.head(n), defined.tail(n)]).unique(maintain_order=True) if len(defined) > 2 * n else defined
    )
    columns = [c for c in ("layer", "neuron", "polarity", "sample", "explanation", score_column) if c in shown.columns]
    shown = shown.select(columns).with_columns(pl.col(score_column).round(3))
    if viewer is not None:
        side = pl.when(pl.col("polarity") == "negative").then(pl.lit("-negative")).otherwise(pl.lit(""))
        shown = shown.with_columns(
            neuron=pl.format("[{}]({}/layer-{}/neuron-{}{})", "neuron", pl.lit(viewer), "layer", "neuron", side)
        )
    table = markdown(shown)
    undefined = len(frame) - len(defined)
    return table + (f"\n\n{undefined} row(s) with an undefined score (see `undefined_reason`)." if undefined else "")


def every_quarter(log: Any) -> Any:
    """Wrap a (done, total) progress callback to fire at most once per quarter of the work."""
    reported = {0}

    def progress(done: int, total: int) -> None:
        quarter = 4 * done // total
        if quarter not in reported:
            reported.add(quarter)
            log(done, total)

    return progress


def markdown(frame: pl.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)


def sides(frame: pl.DataFrame) -> list[str]:
    """The polarities a layer table holds ('positive' first), for assets that treat each side as a neuron."""
    return sorted(frame["polarity"].unique().to_list(), reverse=True)


def side(frame: pl.DataFrame, polarity: str) -> pl.DataFrame:
    """One polarity's rows, without the column: the core sees a neuron's (possibly negated) activations."""
    return frame.filter(pl.col("polarity") == polarity).drop("polarity")


def each_side(frame: pl.DataFrame, make: Callable[[str], pl.DataFrame]) -> pl.DataFrame:
    """``make(polarity)`` for every polarity of ``frame``, tagged with it and stacked."""
    return pl.concat([make(p).with_columns(polarity=pl.lit(p)) for p in sides(frame)], how="vertical")


def column_schema(table: str) -> dg.TableSchema:
    """The table's columns with their descriptions, from its pandera model, for the Dagster UI's column table."""
    from neuron_assets.storage.schemas import TABLES

    columns = TABLES[table].to_schema().columns
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, str(column.dtype), description=column.description) for name, column in columns.items()
        ]
    )
