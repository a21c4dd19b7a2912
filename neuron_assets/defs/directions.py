"""Explainable directions (method.md §9): per layer, unit directions θ whose virtual neuron
a_θ = aᵀ Σ^{-1/2} θ is well explained, found by coordinate ascent with lookup-table explanations.

Its own group after recording (it needs no LLM): it runs the subject model over the corpus once
for the covariance and twice per round, so it is not part of ``make demo``; ``make directions``
runs a small version. The layer must have been recorded (``neuron_stats``), whose start token it
reuses; the layer's stored ``scores`` are read where present for the comparison, not required.
"""

from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from neuron_assets.defs.common import requested_layers, table
from neuron_assets.defs.experiments import Experiment
from neuron_assets.defs.resources import ResultStoreResource, SubjectModelResource

GROUP = "directions"


class DirectionsConfig(dg.Config):
    n_directions: int = Field(default=8, description="directions per layer (at most d_mlp)")
    rounds: int = Field(default=5, description="coordinate-ascent rounds (round 0 explains the random start)")
    steps_per_round: int = Field(default=100, description="Adam steps on θ per round (lr 1e-2, betas 0.9/0.999)")
    seed: int = Field(default=0, description="seed of the random starting directions, random excerpts and neurons")
    n_top: int = Field(default=10, description="top scoring-pool excerpts per direction (by maximum a_θ)")
    n_random: int = Field(default=10, description="random scoring-pool excerpts per direction")
    batch_size: int = Field(default=16, description="excerpts per forward pass")
    eps: float = Field(default=1e-6, description="Σ's eigenvalues are floored at eps x the largest before Σ^{-1/2}")
    n_neurons_compared: int = Field(
        default=64, description="random neurons of the layer scored with the same lookup table, for the comparison"
    )
    recover_fraction: float = Field(
        default=0.9, description="truncation: the share of a found direction's score its top neurons must recover"
    )


def build_variant_assets(experiment: Experiment) -> list[Any]:
    """This domain's multi-asset for one variant of one subject model, partitioned by its layers."""
    Config = experiment.config(DirectionsConfig, "direction_rounds")

    @dg.multi_asset(
        name=experiment.op_name("direction_rounds"),
        outs={
            "direction_rounds": experiment.out(
                "direction_rounds",
                GROUP,
                "Every round of every direction's coordinate ascent: θ, the lookup-table explanation kept and its "
                "correlation score before and after the round's Adam steps.",
            ),
            "direction_summaries": experiment.out(
                "direction_summaries",
                GROUP,
                "Per found direction: start and found scores, the largest |cosine| to another, and how many of "
                "its top-|weight| neurons recover its score.",
            ),
        },
        ins=experiment.ins("excerpts"),
        deps=[experiment.key("neuron_stats")],
        partitions_def=experiment.partitions,
        backfill_policy=experiment.backfill_policy("direction_rounds"),
    )
    def direction_rounds(
        context: dg.AssetExecutionContext,
        config: Config,
        subject_model: SubjectModelResource,
        results: ResultStoreResource,
        excerpts: pl.DataFrame,
    ) -> Any:
        """Explainable directions of the requested layers: a covariance pass, Σ^{-1/2}, random
        starts, then rounds of (record all virtual neurons in one pass, explain each with its token
        lookup table, score, Adam ascent on θ)."""
        import time

        from neuron_assets.directions.ascent import rounds_frame
        from neuron_assets.directions.search import (
            Corpus,
            DirectionsError,
            SearchSettings,
            comparison,
            search,
            summaries,
        )
        from neuron_assets.scorers.methods import LOOKUP_TABLE
        from neuron_assets.viewer import plots

        layers = requested_layers(context)
        store = results.store()
        model_prefix = experiment.prefix("neuron_stats")
        recorded = set(store.partitions("neuron_stats", model_prefix))
        unrecorded = [layer for layer in layers if str(layer) not in recorded]
        if unrecorded:
            raise DirectionsError(
                f"layer(s) {unrecorded} have not been recorded: materialize activation_records (neuron_stats) for "
                f"them first"
            )
        stats = store.read("neuron_stats", [str(layer) for layer in layers], model_prefix)
        model = subject_model.load_for(experiment.subject_model, excerpts)
        model.check_layers(layers)
        if stats["subject_model"][0] != model.name:
            raise DirectionsError(
                f"the layers were recorded on {stats['subject_model'][0]!r} but the subject model is {model.name!r}: "
                "materialize activation_records again"
            )
        settings = SearchSettings(**config.model_dump())
        if settings.n_directions > model.d_mlp:
            raise DirectionsError(
                f"{settings.n_directions} directions asked for a layer of d_mlp {model.d_mlp}: at most {model.d_mlp}"
            )
        recorded_start = stats["document_start_token"][0]
        corpus = Corpus.of(excerpts, None if recorded_start is None else model.document_start_token_id(recorded_start))
        scored = set(store.partitions("scores", experiment.prefix("scores")))
        rounds, summary, comparisons, seconds = [], [], [], {}
        for layer in layers:
            started = time.perf_counter()
            result = search(model.run_with_mlp_hooks, corpus, layer, model.d_mlp, settings, context.log.info)
            seconds[layer] = round(time.perf_counter() - started, 1)
            rounds.append(
                rounds_frame(result.history, layer, lambda t: t.text).with_columns(
                    explanation_kind=pl.lit("lookup_table"), polarity=pl.lit("positive")
                )
            )
            per_direction = summaries(result, layer, settings.recover_fraction)
            summary.append(per_direction.with_columns(polarity=pl.lit("positive")))
            stored = None
            if str(layer) in scored:
                stored = store.read("scores", [str(layer)], experiment.prefix("scores")).filter(
                    (pl.col("method") == LOOKUP_TABLE) & (pl.col("scoring_set") == "top_and_random")
                )
            comparisons.append(
                comparison(per_direction, result.neuron_scores, stored).with_columns(layer=pl.lit(layer))
            )
        rounds_out = experiment.lineage(pl.concat(rounds), context, "direction_rounds")
        summary_out = experiment.lineage(pl.concat(summary), context, "direction_summaries")
        compared = pl.concat(comparisons).select("layer", pl.exclude("layer"))
        found = compared.filter(pl.col("what").str.starts_with("found"))
        yield dg.Output(
            rounds_out,
            "direction_rounds",
            metadata={
                "rounds": settings.rounds,
                "directions_per_layer": settings.n_directions,
                "seconds_by_layer": str(seconds),
                "plot": dg.MetadataValue.md(
                    plots.as_markdown_image(plots.direction_ascent(rounds_out), "score by round")
                ),
            },
        )
        yield dg.Output(
            summary_out,
            "direction_summaries",
            metadata={
                "comparison": table(compared.with_columns(pl.col("mean", "ci_low", "ci_high").round(3))),
                "mean_found_score": _number(found["mean"].mean()),
                "mean_max_abs_cosine": _number(summary_out["max_abs_cosine"].mean()),
                "median_neurons_to_recover": _number(summary_out["neurons_to_recover"].median()),
                "directions": table(
                    summary_out.select(
                        "layer",
                        "direction",
                        pl.col("start_correlation", "found_correlation", "max_abs_cosine").round(3),
                        "neurons_to_recover",
                        "explanation",
                    )
                ),
            },
        )

    return [direction_rounds]


def _number(value: Any) -> dg.MetadataValue:
    """A float as metadata; a missing one as the text 'none'."""
    return dg.MetadataValue.float(round(float(value), 3)) if value is not None else dg.MetadataValue.text("none")
