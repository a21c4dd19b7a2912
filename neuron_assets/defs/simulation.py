"""Simulation: each neuron's scoring excerpts, the simulator LLM's predictions from an explanation
(its own, the lookup explanation's, a control's), and the token baselines' predictions.
"""

from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from neuron_assets.defs.common import each_side, side, table
from neuron_assets.defs.experiments import Experiment
from neuron_assets.defs.resources import SubjectModelResource
from neuron_assets.scorers.methods import DEFAULT_SIMULATED, SIMULATED, TOKEN_BASELINES

GROUP = "simulation"


class ScoringExcerptConfig(dg.Config):
    n_top: int = Field(default=5, description="top scoring-pool excerpts scored per neuron")
    n_random: int = Field(default=5, description="random scoring-pool excerpts scored per neuron")
    n_calibration_top: int = Field(default=2, description="further top excerpts, held out to fit the calibration")
    n_calibration_random: int = Field(default=3, description="further random excerpts, held out to fit the calibration")


class SimulationConfig(dg.Config):
    methods: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SIMULATED),
        description=(
            "explanations to simulate: 'explanation', 'lookup_explanation', 'control' (another neuron's), "
            "'next_token_explanation' (simulated on the next tokens)"
        ),
    )
    control_seed: int = Field(default=0, description="seed of the shuffle that gives each neuron another's explanation")
    mode: str = Field(
        default="auto",
        description=(
            "'auto' (what the backend supports), 'all_at_once' (prompt log-probabilities), "
            "'chat_logprobs' (generated-token top_logprobs), 'one_at_a_time' (a call per token, "
            "the reference) or 'json' (no log-probabilities)"
        ),
    )


class TokenBaselineConfig(dg.Config):
    methods: list[str] = Field(
        default_factory=lambda: list(TOKEN_BASELINES), description="'lookup_table' and/or 'weight_based'"
    )


def build_model_assets(experiment: Experiment) -> list[Any]:
    """What one subject model's variants share: the scoring excerpts and the token baselines (no LLM)."""

    @dg.asset(group_name=GROUP, **experiment.asset("scoring_excerpts", "activation_records"))
    def scoring_excerpts(
        context: dg.AssetExecutionContext, config: ScoringExcerptConfig, activation_records: pl.DataFrame
    ) -> pl.DataFrame:
        """Each neuron's scoring excerpts (top and random) and held-out calibration excerpts: every
        method of a neuron is scored on these same tokens."""
        from neuron_assets.scorers.scoring import select_scoring_excerpts

        frame = each_side(
            activation_records,
            lambda polarity: select_scoring_excerpts(
                side(activation_records, polarity),
                config.n_top,
                config.n_random,
                config.n_calibration_top,
                config.n_calibration_random,
            ),
        )
        kinds = frame.group_by("excerpt_kind").len().sort("excerpt_kind")
        context.add_output_metadata({"excerpts_by_kind": table(kinds)})
        return experiment.lineage(frame, context, "scoring_excerpts")

    @dg.asset(group_name=GROUP, **experiment.asset("token_predictions", "token_lookup", "scoring_excerpts", "excerpts"))
    def token_predictions(
        context: dg.AssetExecutionContext,
        config: TokenBaselineConfig,
        subject_model: SubjectModelResource,
        token_lookup: pl.DataFrame,
        scoring_excerpts: pl.DataFrame,
        excerpts: pl.DataFrame,
    ) -> pl.DataFrame:
        """The token baselines' predictions on each neuron's scoring and calibration excerpts: the
        lookup table's and the weight-based ones (no LLM)."""
        from neuron_assets.baselines.token_baselines import (
            lookup_fallback,
            predict_from_token_table,
            weight_based_table,
        )
        from neuron_assets.scorers.methods import LOOKUP_TABLE, WEIGHT_BASED, check_methods

        methods = check_methods(config.methods, TOKEN_BASELINES, "token_predictions config 'methods'")
        model = subject_model.load_for(experiment.subject_model, excerpts) if WEIGHT_BASED in methods else None

        def predict_side(polarity: str) -> pl.DataFrame:
            scoring, frames = side(scoring_excerpts, polarity), []
            if LOOKUP_TABLE in methods:
                lookup = side(token_lookup, polarity)  # recorded on the side's own (negated) activations
                table = lookup.rename({"mean_activation": "value"})
                frames.append(predict_from_token_table(table, lookup_fallback(lookup), scoring, excerpts, LOOKUP_TABLE))
            if model is not None:
                table = weight_based_table(model.direct_token_activations, scoring, excerpts)
                if polarity == "negative":
                    table = table.with_columns(-pl.col("value"))
                frames.append(predict_from_token_table(table, None, scoring, excerpts, WEIGHT_BASED))
            return pl.concat(frames, how="vertical")

        frame = each_side(scoring_excerpts, predict_side)
        context.add_output_metadata({"predicted_excerpts": len(frame), "methods": str(methods)})
        return experiment.lineage(frame, context, "token_predictions")

    return [scoring_excerpts, token_predictions]


def build_variant_assets(experiment: Experiment) -> list[Any]:
    """The simulator LLM's simulations for one variant of one subject model, partitioned by its layers;
    the variant's settings are its config's defaults, and its LLM the variant's."""
    VariantConfig = experiment.config(SimulationConfig, "simulations")

    @dg.asset(group_name=GROUP, **experiment.llm_asset("simulations", "explanations", "scoring_excerpts", "excerpts"))
    def simulations(
        context: dg.AssetExecutionContext,
        config: VariantConfig,
        explanations: pl.DataFrame,
        scoring_excerpts: pl.DataFrame,
        excerpts: pl.DataFrame,
    ) -> pl.DataFrame:
        """The simulator LLM's predicted activations, from the explanation alone, on each neuron's
        scoring and calibration excerpts; also for the lookup explanation and the control (another
        neuron's explanation)."""
        from neuron_assets.baselines.controls import check_explained, explanation_jobs
        from neuron_assets.explainers.next_token import next_token_view
        from neuron_assets.scorers.methods import NEXT_TOKEN_EXPLANATION, check_methods
        from neuron_assets.simulators.neurons import simulate_neurons

        methods = check_methods(config.methods, SIMULATED, "simulations config 'methods'")
        check_explained(explanations, methods, "simulations")  # a method the table lacks fails before any call
        llm = experiment.llm(context)
        client, simulator, mode, ten_handling, shift = llm.simulator(config.mode)
        context.log.info(
            f"simulation mode: {mode} (asked for {config.mode}); the value 10 is read as {ten_handling}"
            + (f"; echoed distributions are read at shift {shift}" if mode == "all_at_once" else "")
        )

        def simulate_side(polarity: str) -> pl.DataFrame:
            jobs = explanation_jobs(side(explanations, polarity), methods, config.control_seed)
            scoring = side(scoring_excerpts, polarity)
            next_token = pl.col("method") == NEXT_TOKEN_EXPLANATION
            views = [(jobs.filter(~next_token), scoring, excerpts)]
            if NEXT_TOKEN_EXPLANATION in methods:  # simulated on the next tokens, against the same activations
                views.append((jobs.filter(next_token), *next_token_view(scoring, excerpts)))
            return pl.concat(
                [
                    simulate_neurons(
                        client,
                        simulator,
                        view_jobs,
                        view_scoring,
                        view_excerpts,
                        mode=mode,
                        distribution_shift=shift,
                        ten_handling=ten_handling,
                        concurrency=llm.max_concurrency,
                        on_neuron=lambda layer, neuron: context.log.info(
                            f"simulated layer {layer} neuron {neuron} ({polarity})"
                        ),
                    )
                    for view_jobs, view_scoring, view_excerpts in views
                    if len(view_jobs)
                ],
                how="vertical",
            )

        frame = each_side(explanations, simulate_side)
        context.add_output_metadata(
            {
                "simulated_excerpts": len(frame),
                "methods": str(methods),
                "simulator_model": simulator,
                "simulation_mode": mode,
                "simulation_mode_requested": config.mode,
                "ten_handling": ten_handling,
                "prompt_logprobs_shift": shift,
                "unsimulated_tokens": int(frame["n_unsimulated"].sum()),
                "misaligned_tokens": int(frame["n_misaligned"].sum()),
                **client.stats.as_metadata(),
                **llm.server_metadata(),
            }
        )
        frame = experiment.with_settings(frame, "simulations", config, llm, upstream=explanations)
        return experiment.lineage(frame, context, "simulations")

    return [simulations]
