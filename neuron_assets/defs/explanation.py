"""Explanation: the explainer LLM's one-sentence explanations and the lookup-table explanation baseline."""

from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from neuron_assets.defs.common import each_side, preview, side
from neuron_assets.defs.experiments import Experiment
from neuron_assets.scorers.methods import DEFAULT_EXPLAINED, EXPLAINED

GROUP = "explanation"


class ExplanationConfig(dg.Config):
    methods: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EXPLAINED),
        description=(
            "'explanation' (from top excerpts), 'lookup_explanation' (from the token lookup table) and/or "
            "'next_token_explanation' (top excerpts with each activation beside the next token)"
        ),
    )
    n_examples: int = Field(default=5, description="top excerpts shown to the explainer")
    lookup_tokens: int = Field(default=20, description="top lookup-table tokens shown for a lookup explanation")
    lookup_min_count: int = Field(default=2, description="occurrences a token needs to be shown from the lookup table")
    n_samples: int = Field(default=1, description="explanations sampled per neuron")
    temperature: float = 1.0
    max_tokens: int = 60
    seed: int = 0


def build_variant_assets(experiment: Experiment) -> list[Any]:
    """This domain's assets for one variant of one subject model, partitioned by its layers; the
    variant's settings are its config's defaults, and its LLM the variant's."""
    VariantConfig = experiment.config(ExplanationConfig, "explanations")

    @dg.asset(
        group_name=GROUP, **experiment.llm_asset("explanations", "activation_records", "token_lookup", "excerpts")
    )
    def explanations(
        context: dg.AssetExecutionContext,
        config: VariantConfig,
        activation_records: pl.DataFrame,
        token_lookup: pl.DataFrame,
        excerpts: pl.DataFrame,
    ) -> pl.DataFrame:
        """One-sentence explanation(s) per neuron, written by the explainer LLM from its top
        explanation-pool excerpts, and the lookup-table explanation baseline."""
        from neuron_assets.baselines.token_baselines import top_lookup_tokens
        from neuron_assets.explainers.explainer import explain_lookup_tables, explain_neurons
        from neuron_assets.explainers.next_token import next_token_view
        from neuron_assets.scorers.methods import EXPLANATION, LOOKUP_EXPLANATION, NEXT_TOKEN_EXPLANATION, check_methods

        methods = check_methods(config.methods, EXPLAINED, "explanations config 'methods'")
        llm = experiment.llm(context)
        explainer, _ = llm.model_names()
        client = llm.client()
        options = {
            "n_samples": config.n_samples,
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
            "seed": config.seed,
            "concurrency": llm.max_concurrency,
        }

        def explain_side(polarity: str) -> pl.DataFrame:
            records, lookup, frames = side(activation_records, polarity), side(token_lookup, polarity), []
            where = "" if polarity == "positive" else f" ({polarity})"
            if EXPLANATION in methods:
                frames.append(
                    explain_neurons(
                        client,
                        explainer,
                        records,
                        excerpts,
                        n_examples=config.n_examples,
                        on_neuron=lambda layer, neuron: context.log.info(
                            f"explained layer {layer} neuron {neuron}{where}"
                        ),
                        **options,
                    )
                )
            if NEXT_TOKEN_EXPLANATION in methods:
                frames.append(
                    explain_neurons(
                        client,
                        explainer,
                        *next_token_view(records, excerpts),
                        n_examples=config.n_examples,
                        on_neuron=lambda layer, neuron: context.log.info(
                            f"next-token explained layer {layer} neuron {neuron}{where}"
                        ),
                        **options,
                    ).with_columns(method=pl.lit(NEXT_TOKEN_EXPLANATION))
                )
            if LOOKUP_EXPLANATION in methods:
                top_tokens = top_lookup_tokens(
                    lookup,
                    lookup.select("token_id", "token").unique("token_id"),
                    config.lookup_tokens,
                    config.lookup_min_count,
                )
                frames.append(
                    explain_lookup_tables(
                        client,
                        explainer,
                        top_tokens,
                        on_neuron=lambda layer, neuron: context.log.info(
                            f"lookup-explained layer {layer} neuron {neuron}{where}"
                        ),
                        **options,
                    )
                )
            return pl.concat(frames, how="vertical")

        frame = each_side(activation_records, explain_side)
        shown = frame.filter(pl.col("method") == EXPLANATION).join(
            activation_records.group_by("layer", "neuron", "polarity").agg(pl.col("max_activation").max()),
            on=["layer", "neuron", "polarity"],
        )
        context.add_output_metadata(
            {
                "explanations": len(frame),
                "methods": str(methods),
                "explainer_model": explainer,
                **client.stats.as_metadata(),
                **llm.server_metadata(),
                "preview_by_max_activation": preview(shown, "max_activation", experiment.viewer),
            }
        )
        frame = experiment.with_settings(frame, "explanations", config, llm)
        return experiment.lineage(frame, context, "explanations")

    return [explanations]
