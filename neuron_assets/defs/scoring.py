"""Scoring: every method's correlation score with held-out calibration, and methods compared per layer."""

from collections.abc import Iterator
from typing import Any

import dagster as dg
import polars as pl

from neuron_assets.defs.common import check_specs, each_side, frame_check, preview, side, table, with_checks
from neuron_assets.defs.common import sides as sides_of
from neuron_assets.defs.experiments import Experiment

GROUP = "scoring"


@frame_check("Every stored score is a number in [-1, 1] or NULL with its reason; never NaN.")
def undefined_scores_carry_a_reason(scores: pl.DataFrame) -> dg.AssetCheckResult:
    nan = scores.filter(pl.col("correlation").is_nan())
    unexplained = scores.filter(pl.col("correlation").is_null() & pl.col("undefined_reason").is_null())
    return dg.AssetCheckResult(
        passed=nan.is_empty() and unexplained.is_empty(),
        metadata={"nan_scores": len(nan), "null_scores_without_reason": len(unexplained)},
    )


@frame_check(
    "Every method of a neuron is scored on the same tokens (the same scoring excerpts, unsimulated ones "
    "counted); next-token explanations, which have no next token for each excerpt's last position, on "
    "the same tokens as each other."
)
def every_method_is_scored_on_the_same_tokens(scores: pl.DataFrame) -> dg.AssetCheckResult:
    view = (pl.col("method") == "next_token_explanation").alias("next_token_view")
    differing = (
        scores.group_by("layer", "neuron", "polarity", "scoring_set", view)
        .agg(pl.col("n_tokens").n_unique())
        .filter(pl.col("n_tokens") > 1)
    )
    return dg.AssetCheckResult(
        passed=differing.is_empty(), metadata={"neuron_sets_with_differing_tokens": len(differing)}
    )


# run with the scores asset, on the layers it just wrote
SCORE_CHECKS = (undefined_scores_carry_a_reason, every_method_is_scored_on_the_same_tokens)


def score_plots(scores: pl.DataFrame) -> str:
    """The layers' plots as Markdown images: mean explanation score by layer with intervals, the
    score distribution per layer, and the explanation against each baseline scored."""
    from neuron_assets.baselines.controls import compare_methods
    from neuron_assets.viewer import plots
    from neuron_assets.viewer.data import BASELINES

    sides = sides_of(scores)
    images = []
    for polarity in sides:
        one = scores.filter(pl.col("polarity") == polarity)
        where = "" if sides == ["positive"] else f" ({polarity})"
        images.append(plots.as_markdown_image(plots.layer_means(compare_methods(one)), f"mean score by layer{where}"))
        images.append(plots.as_markdown_image(plots.score_distributions(one), f"scores per layer{where}"))
        images += [
            plots.as_markdown_image(plots.explanation_vs(one, method), f"explanation vs {method}{where}")
            for method in BASELINES
            if method in set(one["method"].to_list())
        ]
    return "\n\n".join(images)


def build_variant_assets(experiment: Experiment) -> list[Any]:
    """This domain's assets for one variant of one subject model, partitioned by its layers."""

    @dg.asset(
        group_name=GROUP,
        check_specs=check_specs(experiment.key("scores"), experiment.partitions, *SCORE_CHECKS),
        **experiment.asset("scores", "simulations", "token_predictions", "explanations"),
    )
    def scores(
        context: dg.AssetExecutionContext,
        simulations: pl.DataFrame,
        token_predictions: pl.DataFrame,
        explanations: pl.DataFrame,
    ) -> Iterator[Any]:
        """Every method's score per neuron: correlation of simulated (or predicted) with true
        activations on top-and-random and random-only excerpts, and explained variance under a
        held-out calibration."""
        from neuron_assets.scorers.methods import TOKEN_BASELINES
        from neuron_assets.scorers.scoring import score_simulations

        columns = [
            "layer",
            "neuron",
            "sample",
            "method",
            "explanation_neuron",
            "excerpt_id",
            "excerpt_kind",
            "simulated",
            "true_activations",
        ]
        predictions = token_predictions.with_columns(
            sample=pl.lit(0, dtype=pl.Int64),
            explanation_neuron=pl.lit(None, dtype=pl.Int64),
            simulated=pl.col("predicted"),
        )
        together = pl.concat([simulations.select(*columns, "polarity"), predictions.select(*columns, "polarity")])
        frame = experiment.lineage(
            each_side(together, lambda polarity: score_simulations(side(together, polarity))), context, "scores"
        )
        simulated = ~pl.col("method").is_in(TOKEN_BASELINES)  # token baselines: no LLM stage, no settings
        frame = experiment.with_settings(frame, "scores", upstream=simulations, rows=simulated)
        named = explanations.select("layer", "neuron", "polarity", "sample", "method", "explanation")
        by_set = frame.join(named, on=["layer", "neuron", "polarity", "sample", "method"])
        summary = (
            frame.group_by("method", "scoring_set")
            .agg(
                pl.col("correlation").mean().alias("mean"),
                pl.col("correlation").is_not_null().sum().alias("scored"),
                pl.col("correlation").is_null().sum().alias("undefined"),
            )
            .sort("method", "scoring_set")
        )
        metadata = {  # a mean never stands without how many scores it covers and how many it leaves out
            "by_method": table(summary.with_columns(pl.col("mean").round(3))),
            "undefined_scores": int(frame["correlation"].is_null().sum()),
            "top_and_random_preview": preview(
                by_set.filter((pl.col("scoring_set") == "top_and_random") & (pl.col("method") == "explanation")),
                "correlation",
                experiment.viewer,
            ),
            "plots": dg.MetadataValue.md(score_plots(frame)),
            "viewer": dg.MetadataValue.url(f"{experiment.viewer}/"),
        }
        yield from with_checks(context, frame, *SCORE_CHECKS, metadata=metadata)

    @dg.asset(group_name=GROUP, **experiment.asset("method_comparisons", "scores"))
    def method_comparisons(context: dg.AssetExecutionContext, scores: pl.DataFrame) -> pl.DataFrame:
        """Per layer and scoring set: each method's mean score and its paired difference from the
        explanation's, with bootstrap intervals."""
        from neuron_assets.baselines.controls import compare_methods

        frame = each_side(scores, lambda polarity: compare_methods(side(scores, polarity)))
        shown = frame.filter(pl.col("scoring_set") == "top_and_random").select(
            "layer",
            "polarity",
            "method",
            "n_neurons",
            *(
                pl.col(c).round(3)
                for c in ("mean_score", "explanation_minus_method", "difference_ci_low", "difference_ci_high")
            ),
        )
        context.add_output_metadata({"top_and_random": table(shown)})
        return experiment.lineage(frame, context, "method_comparisons")

    return [scores, method_comparisons]
