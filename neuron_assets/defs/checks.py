"""Asset checks: invariants a researcher relies on when reading the results."""

import dagster as dg
import polars as pl

from neuron_assets.defs.resources import ResultStoreResource


@dg.asset_check(asset="excerpts", description="No document has excerpts in both pools.")
def pools_share_no_document(excerpts: pl.DataFrame) -> dg.AssetCheckResult:
    shared = excerpts.group_by("doc_id").agg(pl.col("pool").n_unique()).filter(pl.col("pool") > 1)
    return dg.AssetCheckResult(passed=shared.is_empty(), metadata={"shared_documents": len(shared)})


@dg.asset_check(
    asset="scores",
    description="Every stored score is a number in [-1, 1] or NULL with its reason; never NaN.",
)
def undefined_scores_carry_a_reason(results: ResultStoreResource) -> dg.AssetCheckResult:
    store = results.store()
    scores = store.read("scores", store.partitions("scores"))
    nan = scores.filter(pl.col("correlation").is_nan())
    unexplained = scores.filter(pl.col("correlation").is_null() & pl.col("undefined_reason").is_null())
    return dg.AssetCheckResult(
        passed=nan.is_empty() and unexplained.is_empty(),
        metadata={"nan_scores": len(nan), "null_scores_without_reason": len(unexplained)},
    )


@dg.asset_check(
    asset="scores",
    description="Every method of a neuron is scored on the same tokens (the same scoring excerpts, unsimulated ones counted).",
)
def every_method_is_scored_on_the_same_tokens(results: ResultStoreResource) -> dg.AssetCheckResult:
    store = results.store()
    scores = store.read("scores", store.partitions("scores"))
    differing = scores.group_by("layer", "neuron", "scoring_set").agg(pl.col("n_tokens").n_unique()).filter(
        pl.col("n_tokens") > 1
    )
    return dg.AssetCheckResult(passed=differing.is_empty(), metadata={"neuron_sets_with_differing_tokens": len(differing)})


CHECKS = [pools_share_no_document, undefined_scores_carry_a_reason, every_method_is_scored_on_the_same_tokens]
