"""The classifier scorers (delphi's detection, fuzzing and surprisal) beside the correlation score:
every explanation of a neuron, its control and its lookup explanation, asked about whole
excerpts of the scoring pool.

Its own group after ``explanations``: it is not part of ``make demo``; the ``classifier_scores``
table and the views ``neuron_scorers``, ``scorer_layers`` and ``scorers_beside_simulation`` hold
the results.
"""

from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from neuron_assets.defs.common import check_specs, each_side, frame_check, side, sides, table, with_checks
from neuron_assets.defs.experiments import Experiment

GROUP = "classifiers"


class ClassifierScoreConfig(dg.Config):
    scorers: list[str] = Field(
        default_factory=lambda: ["detection", "fuzzing"],
        description="'detection', 'fuzzing' and/or 'surprisal' (needs prompt log-probabilities: completions with echo)",
    )
    methods: list[str] = Field(
        default_factory=lambda: ["explanation", "lookup_explanation", "control"],
        description="explanations to score: 'explanation', 'lookup_explanation', 'control' (another neuron's)",
    )
    n_top: int = Field(default=10, description="top scoring-pool excerpts asked about as activating, per neuron")
    n_non_activating: int = Field(
        default=10, description="silent random scoring-pool excerpts asked about as non-activating, per neuron"
    )
    silent_fraction: float = Field(
        default=0.1, description="a non-activating excerpt's largest activation, at most, as a share of the neuron's"
    )
    batch_size: int = Field(default=5, description="excerpts per detection or fuzzing call")
    logprobs: str = Field(
        default="auto",
        description="graded answers (P(yes)) for an AUROC: 'auto' (where the chat endpoint gives top_logprobs), "
        "'yes' (an error where it does not) or 'no'",
    )
    control_seed: int = Field(default=0, description="seed of the shuffle that gives each neuron another's explanation")
    seed: int = Field(default=0, description="seed of the examples' order and of fuzzing's markings")


@frame_check("Every metric of a classifier score is between 0 and 1 or NULL; never NaN.")
def classifier_metrics_are_numbers_or_null(frame: pl.DataFrame) -> dg.AssetCheckResult:
    metrics = ["balanced_accuracy", "precision", "recall", "f1", "auroc"]
    nan = frame.filter(pl.any_horizontal(pl.col(metrics).is_nan()))
    return dg.AssetCheckResult(passed=nan.is_empty(), metadata={"nan_rows": len(nan)})


CLASSIFIER_CHECKS = (classifier_metrics_are_numbers_or_null,)


def check_surprisal_backend(llm: Any, client: Any, model: str) -> None:
    """Refuse, before any scoring call, a backend surprisal cannot read: one that echoes no
    prompt log-probabilities, or files them shifted from their token (the alignment probe)."""
    from neuron_assets.simulators.probes import gives_prompt_logprobs

    if not gives_prompt_logprobs(client, model):
        raise ValueError(
            f"the surprisal scorer needs prompt log-probabilities (completions with echo), which {model!r} at "
            f"{llm.backend()} does not give: leave 'surprisal' out of scorers"
        )
    shift = llm.distribution_shift(client, model, "all_at_once")
    if shift != 0:
        raise ValueError(
            f"the server files prompt log-probabilities at shift {shift}; surprisal reads them at their "
            "token (shift 0): leave 'surprisal' out of scorers or use vLLM or llama.cpp's server"
        )


def summary(frame: pl.DataFrame) -> pl.DataFrame:
    """Per layer, scorer and method: how many neuron sides, and the mean of each metric over them."""
    return (
        frame.group_by("layer", "scorer", "method")
        .agg(
            n=pl.len(),
            balanced_accuracy=pl.col("balanced_accuracy").mean(),
            auroc=pl.col("auroc").mean(),
            f1=pl.col("f1").mean(),
        )
        .sort("layer", "scorer", "method")
        .with_columns(pl.col("balanced_accuracy", "auroc", "f1").round(3))
    )


def build_variant_assets(experiment: Experiment) -> list[Any]:
    """This domain's asset for one variant of one subject model, partitioned by its layers."""
    Config = experiment.config(ClassifierScoreConfig, "classifier_scores")

    @dg.asset(
        group_name=GROUP,
        check_specs=check_specs(experiment.key("classifier_scores"), experiment.partitions, *CLASSIFIER_CHECKS),
        **experiment.llm_asset("classifier_scores", "explanations", "activation_records", "excerpts"),
    )
    def classifier_scores(
        context: dg.AssetExecutionContext,
        config: Config,
        explanations: pl.DataFrame,
        activation_records: pl.DataFrame,
        excerpts: pl.DataFrame,
    ) -> Any:
        """Each explanation, lookup explanation and control of a neuron scored by detection, fuzzing
        and/or surprisal on the same examples: top and quantile excerpts of the scoring pool against
        silent random ones (balanced accuracy, precision, recall, F1; AUROC where graded)."""
        from neuron_assets.baselines.controls import check_explained, explanation_jobs
        from neuron_assets.scorers.classifier_neurons import (
            SURPRISAL,
            check_scorers,
            neuron_examples,
            score_by_classifiers,
        )
        from neuron_assets.scorers.methods import CLASSIFIED, check_methods
        from neuron_assets.simulators.probes import gives_chat_logprobs

        scorers = check_scorers(config.scorers, "classifier_scores config 'scorers'")
        methods = check_methods(config.methods, CLASSIFIED, "classifier_scores config 'methods'")
        if config.logprobs not in ("auto", "yes", "no"):
            raise ValueError(f"classifier_scores config 'logprobs' is {config.logprobs!r}, not 'auto', 'yes' or 'no'")
        check_explained(explanations, methods, "classifier_scores")  # a method the table lacks fails first
        examples = {  # chosen before any call: too few examples stops the step first
            polarity: neuron_examples(
                side(explanations, polarity),
                side(activation_records, polarity),
                excerpts,
                n_top=config.n_top,
                n_non_activating=config.n_non_activating,
                silent_fraction=config.silent_fraction,
                seed=config.seed,
            )
            for polarity in sides(explanations)
        }
        llm = experiment.llm(context)
        client = llm.client()
        _, model = llm.model_names()
        if SURPRISAL in scorers:
            check_surprisal_backend(llm, client, model)
        graded = config.logprobs != "no" and (
            bool({"detection", "fuzzing"} & set(scorers)) and gives_chat_logprobs(client, model)
        )
        if config.logprobs == "yes" and not graded:
            raise ValueError(
                f"classifier_scores config 'logprobs' is 'yes', but {model!r} at {llm.backend()} gives no top_logprobs "
                "on its chat endpoint: set it to 'auto' or 'no' (AUROC then stays NULL)"
            )

        def score_side(polarity: str) -> pl.DataFrame:
            return score_by_classifiers(
                client,
                model,
                explanation_jobs(side(explanations, polarity), methods, config.control_seed),
                examples[polarity],
                scorers=scorers,
                silent_fraction=config.silent_fraction,
                batch_size=config.batch_size,
                use_logprobs=graded,
                seed=config.seed,
                concurrency=llm.max_concurrency,
                on_neuron=lambda layer, neuron: context.log.info(
                    f"scored layer {layer} neuron {neuron} ({polarity}) by {', '.join(scorers)}"
                ),
            )

        frame = each_side(explanations, score_side)
        metadata = {
            "by_layer_scorer_and_method": table(summary(frame)),
            "scorers": str(scorers),
            "methods": str(methods),
            "graded_answers": graded,
            "scorer_model": model,
            **client.stats.as_metadata(),
            **llm.server_metadata(),
        }
        frame = experiment.with_settings(frame, "classifier_scores", config, llm, upstream=explanations)
        frame = experiment.lineage(frame, context, "classifier_scores")
        yield from with_checks(context, frame, *CLASSIFIER_CHECKS, metadata=metadata)

    return [classifier_scores]
