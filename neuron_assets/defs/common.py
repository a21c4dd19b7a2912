"""What every domain's assets share: partition keys, column schemas, UI metadata helpers."""

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import polars as pl

from neuron_assets.defs.partitions import layer_of

# Layer-partitioned assets backfill as one run: one forward pass over the corpus records every
# requested layer, and one LLM server serves all of them.
SINGLE_RUN = dg.BackfillPolicy.single_run()


def requested_layers(context: dg.AssetExecutionContext) -> list[int]:
    return sorted(layer_of(key) for key in context.partition_keys)


def preview(frame: pl.DataFrame, score_column: str, viewer: str | None = None, n: int = 3) -> dg.TableMetadataValue:
    """Table of the best and worst rows by ``score_column``, rows without a score left out (``scores``
    counts them in ``by_method``); with ``viewer`` (the experiment's viewer address) a ``viewer``
    column gives each neuron's page."""
    defined = frame.filter(pl.col(score_column).is_not_null()).sort(score_column, descending=True)
    shown = (
        pl.concat([defined.head(n), defined.tail(n)]).unique(maintain_order=True) if len(defined) > 2 * n else defined
    )
    columns = [c for c in ("layer", "neuron", "polarity", "sample", "explanation", score_column) if c in shown.columns]
    shown = shown.select(columns).with_columns(pl.col(score_column).round(3))
    if viewer is not None:
        side = pl.when(pl.col("polarity") == "negative").then(pl.lit("-negative")).otherwise(pl.lit(""))
        shown = shown.with_columns(viewer=pl.format("{}/layer-{}/neuron-{}{}", pl.lit(viewer), "layer", "neuron", side))
    return table(shown)


@dataclass(frozen=True)
class FrameCheck:
    """An asset check declared with its asset (``check_specs``) and run in the asset's step on the
    frame the asset returns (``with_checks``), not on every stored partition. ``evaluate`` gives the result
    on one frame: whether it passed, its metadata and, where not an error, its severity."""

    name: str
    description: str
    evaluate: Callable[[pl.DataFrame], dg.AssetCheckResult]


def frame_check(description: str) -> Callable[[Callable[[pl.DataFrame], dg.AssetCheckResult]], FrameCheck]:
    """Make the decorated function a ``FrameCheck`` named after it."""
    return lambda evaluate: FrameCheck(evaluate.__name__, description, evaluate)


def check_specs(
    key: dg.AssetKey, partitions: dg.PartitionsDefinition | None, *checks: FrameCheck
) -> list[dg.AssetCheckSpec]:
    """The checks' specs for ``@dg.asset(check_specs=...)``; a partitioned asset's checks are
    partitioned alike, so each result is recorded for its layer partition."""
    with warnings.catch_warnings():  # a partitioned check is a preview feature in Dagster 1.13
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(check.name, asset=key, description=check.description, partitions_def=partitions)
            for check in checks
        ]


def with_checks(
    context: dg.AssetExecutionContext, frame: pl.DataFrame, *checks: FrameCheck, metadata: dict[str, Any] | None = None
) -> Iterator[Any]:
    """``frame`` as the asset's output, with ``metadata`` (an asset with checks has more than one
    output, so ``context.add_output_metadata`` would need the output's name), then each check's
    result on it. The output comes first: the IO manager has stored it before any check runs, so a
    failing check loses no data.

    A run of one layer partition (or of an unpartitioned asset) gets each check's
    ``AssetCheckResult``, which Dagster records for the run's partition. A run of several layers (a
    single-run backfill) would get one result for them all, recorded for no partition, so there
    each check is evaluated on each layer's rows and yielded as that partition's
    ``AssetCheckEvaluation`` (what Dagster makes of an ``AssetCheckResult``, its partition set),
    after the check's empty output, which Dagster requires of the step."""
    yield dg.Output(frame, metadata=metadata)
    by_layer = context.assets_def.partitions_def is not None and not context.has_partition_key
    for check in checks:
        if not by_layer:
            result = check.evaluate(frame)
            yield dg.AssetCheckResult(
                check_name=check.name,
                passed=result.passed,
                metadata=result.metadata,
                severity=result.severity,
                description=result.description,
            )
            continue
        key = dg.AssetCheckKey(context.asset_key, check.name)
        yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(key))
        for partition in context.partition_keys:
            result = check.evaluate(frame.filter(pl.col("layer") == layer_of(partition)))
            yield dg.AssetCheckEvaluation(
                asset_key=context.asset_key,
                check_name=check.name,
                passed=result.passed,
                metadata=result.metadata,
                severity=result.severity,
                description=result.description,
                blocking=False,
                partition=partition,
            )


def every_quarter(log: Any) -> Any:
    """Wrap a (done, total) progress callback to fire at most once per quarter of the work."""
    reported = {0}

    def progress(done: int, total: int) -> None:
        quarter = 4 * done // total
        if quarter not in reported:
            reported.add(quarter)
            log(done, total)

    return progress


def table(frame: pl.DataFrame) -> dg.TableMetadataValue:
    """``frame`` as table metadata, its columns typed: the Dagster UI shows it as a table."""

    def kind(dtype: pl.DataType) -> str:
        if dtype == pl.Boolean:
            return "bool"
        if dtype.is_integer():
            return "int"
        return "float" if dtype.is_float() else "string"

    def cell(value: Any) -> Any:
        """A cell is a string, number, bool or empty; NaN and infinity as text (JSON has no number for them)."""
        if value is None or isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value)):
            return value
        return str(value)

    return dg.MetadataValue.table(
        records=[dg.TableRecord({n: cell(v) for n, v in row.items()}) for row in frame.iter_rows(named=True)],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, kind(dtype)) for name, dtype in frame.schema.items()]),
    )


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
