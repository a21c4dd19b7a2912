"""The asset checks run in their asset's step on the frame it returns, one result per layer partition
written; tables in metadata are table metadata. A tiny in-memory store: no model, no LLM."""

import dagster as dg
import polars as pl
import pytest

from neuron_assets.defs import scoring
from neuron_assets.defs.experiments import Experiment
from neuron_assets.defs.partitions import layer_key, layer_of, layer_partitions

EXPERIMENT = Experiment("tiny", partitions=layer_partitions(2))
CHECKS = {"undefined_scores_carry_a_reason", "every_method_is_scored_on_the_same_tokens"}


class MemoryIOManager(dg.IOManager):
    """Serves the upstream tables by layer partition and keeps what each step hands over to store."""

    def __init__(self, tables: dict[str, pl.DataFrame]) -> None:
        self.tables, self.stored = tables, {}

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        self.stored[context.asset_key.path[-1]] = obj

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        layers = [layer_of(key) for key in context.asset_partition_keys]
        return self.tables[context.upstream_output.asset_key.path[-1]].filter(pl.col("layer").is_in(layers))


def upstream_tables(longer_control_in_layer: int | None = None) -> dict[str, pl.DataFrame]:
    """Neuron 7 of layers 0 and 1: its explanation and the control simulated on the same excerpts
    (the control's top excerpt one token longer in ``longer_control_in_layer``), and a lookup-table
    prediction."""
    simulations, predictions = [], []
    for layer in (0, 1):
        for method, neuron in (("explanation", 7), ("control", 9)):
            extra = [0.0] if method == "control" and layer == longer_control_in_layer else []
            simulations += [
                (layer, 7, 0, method, neuron, 1, "top", [0.0, 9.0, 1.0] + extra, [0.0, 5.0, 1.0] + extra),
                (layer, 7, 0, method, neuron, 2, "random", [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]),
                (layer, 7, 0, method, neuron, 3, "calibration_top", [0.0, 10.0, 0.0], [0.0, 2.0, 0.0]),
            ]
        predictions += [
            (layer, 7, "lookup_table", 1, "top", [0.0, 4.0, 1.0], [0.0, 5.0, 1.0]),
            (layer, 7, "lookup_table", 2, "random", [0.5, 0.0, 0.2], [0.0, 0.0, 1.0]),
        ]
    columns = ["layer", "neuron", "sample", "method", "explanation_neuron", "excerpt_id", "excerpt_kind"]
    positive = pl.lit("positive").alias("polarity")
    return {
        "simulations": pl.DataFrame(
            simulations, schema=[*columns, "simulated", "true_activations"], orient="row"
        ).with_columns(positive),
        "token_predictions": pl.DataFrame(
            predictions,
            schema=["layer", "neuron", "method", "excerpt_id", "excerpt_kind", "predicted", "true_activations"],
            orient="row",
        ).with_columns(positive),
        "explanations": pl.DataFrame(
            {"layer": [0, 1], "neuron": [7, 7], "sample": [0, 0], "method": ["explanation"] * 2}
        ).with_columns(positive, explanation=pl.lit("the word 'dog'")),
    }


def materialize_scores(io_manager: MemoryIOManager, **run: object) -> tuple[dg.ExecuteInProcessResult, set]:
    """Run ``scores`` alone; with the run's result, the (partition, status) pairs the instance
    records for one of its checks."""
    scores, _ = scoring.build_variant_assets(EXPERIMENT)
    upstream = [dg.AssetSpec(EXPERIMENT.key(t), partitions_def=EXPERIMENT.partitions) for t in io_manager.tables]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [scores, *upstream], selection=[scores.key], resources={"io_manager": io_manager}, instance=instance, **run
        )
        records = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(scores.key, "every_method_is_scored_on_the_same_tokens"), limit=10
        )
    return result, {(r.partition, r.status.value) for r in records}


def evaluations(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str | None], bool]:
    return {(e.check_name, e.partition): e.passed for e in result.get_asset_check_evaluations()}


def test_a_one_layer_run_records_each_scores_check_for_that_layers_partition_on_the_rows_it_wrote():
    io_manager = MemoryIOManager(upstream_tables(longer_control_in_layer=0))  # layer 0 would fail; not run, not checked
    result, recorded = materialize_scores(io_manager, partition_key=layer_key(1))
    assert result.success
    assert evaluations(result) == {(name, "layer-1"): True for name in CHECKS}
    assert recorded == {("layer-1", "SUCCEEDED")}
    assert set(io_manager.stored["scores"]["layer"]) == {1}


def test_a_several_layer_run_records_each_layers_result_for_its_partition_and_a_failure_loses_no_data():
    io_manager = MemoryIOManager(upstream_tables(longer_control_in_layer=1))
    result, recorded = materialize_scores(
        io_manager,
        tags={"dagster/asset_partition_range_start": layer_key(0), "dagster/asset_partition_range_end": layer_key(1)},
    )
    assert result.success  # a failed check is on record; the run and what it stored stand
    assert evaluations(result) == {
        ("undefined_scores_carry_a_reason", "layer-0"): True,
        ("undefined_scores_carry_a_reason", "layer-1"): True,
        ("every_method_is_scored_on_the_same_tokens", "layer-0"): True,
        ("every_method_is_scored_on_the_same_tokens", "layer-1"): False,
    }
    assert recorded == {("layer-0", "SUCCEEDED"), ("layer-1", "FAILED")}
    (failed,) = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert failed.metadata["neuron_sets_with_differing_tokens"].value == 1  # layer 1's top_and_random set
    stored = io_manager.stored["scores"]
    assert set(stored["layer"]) == {0, 1} and len(stored) == 2 * 3 * 2  # 2 layers x 3 methods x 2 scoring sets


def test_the_scores_tables_in_metadata_are_table_metadata_and_the_stored_rows_are_the_returned_ones():
    io_manager = MemoryIOManager(upstream_tables())
    result, _ = materialize_scores(io_manager, partition_key=layer_key(0))
    (materialization,) = result.asset_materializations_for_node(EXPERIMENT.op_name("scores"))
    by_method = materialization.metadata["by_method"]
    assert isinstance(by_method, dg.TableMetadataValue)
    assert [c.name for c in by_method.schema.columns] == ["method", "scoring_set", "mean", "scored", "undefined"]
    assert {(r.data["method"], r.data["scoring_set"]) for r in by_method.records} == {
        (m, s) for m in ("control", "explanation", "lookup_table") for s in ("random_only", "top_and_random")
    }
    preview = materialization.metadata["top_and_random_preview"]
    assert [r.data["viewer"] for r in preview.records] == [f"{EXPERIMENT.viewer}/layer-0/neuron-7"]
    assert len(io_manager.stored["scores"]) == 6


@pytest.mark.parametrize("nan", [True, False])
def test_a_nan_score_or_a_null_without_reason_fails_the_check_naming_how_many(nan):
    scores = pl.DataFrame(
        {"correlation": [0.5, float("nan") if nan else None], "undefined_reason": [None, None]},
        schema={"correlation": pl.Float64, "undefined_reason": pl.String},
    )
    result = scoring.undefined_scores_carry_a_reason.evaluate(scores)
    assert not result.passed
    assert result.metadata["nan_scores"].value == int(nan)
    assert result.metadata["null_scores_without_reason"].value == int(not nan)


def test_an_unpartitioned_assets_check_runs_on_its_frame_in_a_run_of_several_layers_too():
    from neuron_assets.defs.common import check_specs, with_checks
    from neuron_assets.defs.recording import pools_share_no_document

    key = EXPERIMENT.key("excerpts")
    frame = pl.DataFrame({"doc_id": [1, 1, 2], "pool": ["explanation", "scoring", "scoring"]})

    @dg.asset(key=key, check_specs=check_specs(key, None, pools_share_no_document))
    def excerpts(context: dg.AssetExecutionContext):
        yield from with_checks(context, frame, pools_share_no_document, metadata={"documents": 2})

    io_manager = MemoryIOManager({})
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [excerpts, dg.AssetSpec(EXPERIMENT.key("scores"), partitions_def=EXPERIMENT.partitions)],
            selection=[key],
            resources={"io_manager": io_manager},
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": layer_key(0),
                "dagster/asset_partition_range_end": layer_key(1),
            },
        )
    assert result.success and io_manager.stored["excerpts"] is frame
    (evaluation,) = result.get_asset_check_evaluations()
    assert (evaluation.check_name, evaluation.partition, evaluation.passed) == ("pools_share_no_document", None, False)
    assert evaluation.metadata["shared_documents"].value == 1
    (materialization,) = result.asset_materializations_for_node(EXPERIMENT.op_name("excerpts"))
    assert materialization.metadata["documents"].value == 2
