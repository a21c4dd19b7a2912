"""Ablation (method.md §5): every scored method's ablation score, beside its correlation score.

Its own group, after ``scores``: it runs the subject model once per neuron, excerpt batch and
method, so it is not part of ``make demo``; ``make ablation`` runs a small version.
"""

import time
from typing import Any, Optional

import dagster as dg
import polars as pl
from pydantic import Field

from neuron_assets.defs.common import check_specs, frame_check, table, with_checks
from neuron_assets.defs.experiments import Experiment

GROUP = "ablation"


class AblationConfig(dg.Config):
    scoring_sets: list[str] = Field(
        default_factory=lambda: ["top_and_random", "random_only"],
        description="scoring sets to average over: 'top_and_random', 'random_only'",
    )
    methods: Optional[list[str]] = Field(
        default=None, description="methods to ablate (each must have been scored); unset: every scored method"
    )
    max_neurons: Optional[int] = Field(
        default=None, description="ablate only the lowest-numbered this many scored neurons of each layer; unset: all"
    )
    batch_size: int = Field(default=8, description="excerpts per forward pass (memory: a batch's logits, a few times)")
    mid_model: bool = Field(
        default=True,
        description=(
            "start each perturbed pass at the neuron's block from the cached residual stream (off: from the "
            "embeddings; same result, slower)"
        ),
    )


@frame_check("Every stored ablation score is a number at most 1 or NULL with its reason; never NaN.")
def undefined_ablation_scores_carry_a_reason(frame: pl.DataFrame) -> dg.AssetCheckResult:
    nan = frame.filter(pl.col("ablation_score").is_nan())
    unexplained = frame.filter(pl.col("ablation_score").is_null() & pl.col("undefined_reason").is_null())
    return dg.AssetCheckResult(
        passed=nan.is_empty() and unexplained.is_empty(),
        metadata={"nan_scores": len(nan), "null_scores_without_reason": len(unexplained)},
    )


ABLATION_CHECKS = (undefined_ablation_scores_carry_a_reason,)


def summary(frame: pl.DataFrame, scores: pl.DataFrame) -> pl.DataFrame:
    """Per layer, method and scoring set: mean ablation and correlation scores over the rows where
    both are defined, how many those are, and their rank (Spearman) correlation."""
    keys = ["layer", "neuron", "polarity", "sample", "method", "explanation_neuron", "scoring_set"]
    joined = frame.join(scores.select(*keys, "correlation"), on=keys, how="left", nulls_equal=True)
    both = joined.drop_nulls(["ablation_score", "correlation"])
    return (
        both.group_by("layer", "method", "scoring_set")
        .agg(
            n=pl.len(),
            mean_ablation=pl.col("ablation_score").mean(),
            mean_correlation=pl.col("correlation").mean(),
            rank_correlation=pl.corr("ablation_score", "correlation", method="spearman"),
        )
        .join(
            joined.group_by("layer", "method", "scoring_set").agg(undefined=pl.col("ablation_score").is_null().sum()),
            on=["layer", "method", "scoring_set"],
        )
        .sort("layer", "method", "scoring_set")
    )


def build_variant_assets(experiment: Experiment) -> list[Any]:
    """This domain's asset for one variant of one subject model, partitioned by its layers."""
    Config = experiment.config(AblationConfig, "ablation_scores")

    @dg.asset(
        group_name=GROUP,
        check_specs=check_specs(experiment.key("ablation_scores"), experiment.partitions, *ABLATION_CHECKS),
        required_resource_keys={"subject_model"},
        **experiment.asset(
            "ablation_scores",
            "scores",
            "simulations",
            "token_predictions",
            "scoring_excerpts",
            "excerpts",
            "neuron_stats",
        ),
    )
    def ablation_scores(
        context: dg.AssetExecutionContext,
        config: Config,
        scores: pl.DataFrame,
        simulations: pl.DataFrame,
        token_predictions: pl.DataFrame,
        scoring_excerpts: pl.DataFrame,
        excerpts: pl.DataFrame,
        neuron_stats: pl.DataFrame,
    ) -> Any:
        """Every scored method's ablation score per neuron and scoring set: the next-token distributions
        with the neuron replaced by its calibrated simulation, against those with it replaced by its
        mean activation (1 - E[JSD(simulated)] / E[JSD(mean)])."""
        from neuron_assets.defs.partitions import layer_of
        from neuron_assets.scorers.ablation import AblationError
        from neuron_assets.scorers.ablation import ablation_scores as ablate
        from neuron_assets.viewer import plots

        layers = sorted(layer_of(key) for key in context.partition_keys)
        unscored = [layer for layer in layers if layer not in set(scores["layer"].to_list())]
        if unscored:
            raise AblationError(f"layer(s) {unscored} have no scores: materialize scores for them first")
        model = context.resources.subject_model.load_for(experiment.subject_model, excerpts)
        if len(neuron_stats) and neuron_stats["subject_model"][0] != model.name:
            raise AblationError(
                f"the neurons were recorded on {neuron_stats['subject_model'][0]!r} but the subject model is "
                f"{model.name!r}: materialize activation_records again"
            )
        recorded_start = neuron_stats["document_start_token"][0] if len(neuron_stats) else None
        start = None if recorded_start is None else model.document_start_token_id(recorded_start)
        started = time.perf_counter()
        frame = ablate(
            model,
            scores,
            simulations,
            token_predictions,
            scoring_excerpts,
            excerpts,
            neuron_stats,
            start_token_id=start,
            scoring_sets=config.scoring_sets,
            methods=config.methods,
            max_neurons=config.max_neurons,
            batch_size=config.batch_size,
            mid_model=config.mid_model,
            on_neuron=lambda layer, neuron, polarity: context.log.info(
                f"ablated layer {layer} neuron {neuron} ({polarity})"
            ),
        )
        elapsed = time.perf_counter() - started
        keys = ["layer", "neuron", "polarity", "sample", "method", "explanation_neuron", "scoring_set"]
        with_correlation = frame.join(scores.select(*keys, "correlation"), on=keys, how="left", nulls_equal=True)
        n_sides = frame.select("layer", "neuron", "polarity").n_unique()
        metadata = {
            "by_layer_and_method": table(
                summary(frame, scores).with_columns(
                    pl.col("mean_ablation", "mean_correlation", "rank_correlation").round(3)
                )
            ),
            "neuron_sides": n_sides,
            "undefined_scores": int(frame["ablation_score"].is_null().sum()),
            "seconds": round(elapsed, 1),
            "seconds_per_neuron_side": round(elapsed / n_sides, 2) if n_sides else 0.0,
            "plot": dg.MetadataValue.md(
                plots.as_markdown_image(plots.correlation_vs_ablation(with_correlation), "correlation vs ablation")
            ),
        }
        frame = experiment.lineage(frame, context, "ablation_scores")
        yield from with_checks(context, frame, *ABLATION_CHECKS, metadata=metadata)

    return [ablation_scores]
