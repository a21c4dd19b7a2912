"""Revision (method.md §8): test sentences from each explanation, their real activations, revised
explanations (and the study's two controls), and original vs revised scores.

Each neuron's first explanation sample (``sample`` 0) is revised.
"""

from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from neuron_assets.defs.common import each_side, side, table
from neuron_assets.defs.experiments import Experiment

GROUP = "revision"


class RevisionSentenceConfig(dg.Config):
    n_sentences: int = Field(default=10, description="sentences the explainer is asked to write per explanation")
    n_revision: int = Field(
        default=5, description="of those, how many are shown to the reviser (the rest join the scoring set)"
    )
    false_positive_fraction: float = Field(
        default=0.2,
        description="a sentence is a false positive when its max activation is below this share of the neuron's max",
    )
    max_sentence_tokens: int = Field(default=64, description="longer sentences are recorded as rejected, not run")
    seed: int = 0


class RevisionConfig(dg.Config):
    kinds: list[str] = Field(
        default_factory=lambda: ["revised"],
        description=(
            "'revised' and the study's controls 'reexplained' (no old explanation) and 'random_sentences' (firing "
            "excerpts instead of the sentences)"
        ),
    )
    n_examples: int = Field(default=5, description="original top excerpts shown, as for explanations")
    n_random_excerpts: int = Field(default=5, description="firing excerpts shown by the random_sentences control")
    temperature: float = 1.0
    max_tokens: int = 60
    seed: int = 0


class RevisionScoreConfig(dg.Config):
    mode: str = Field(default="auto", description="simulator mode, as for simulations")


def _first_samples(explanations: pl.DataFrame) -> pl.DataFrame:
    return explanations.filter((pl.col("method") == "explanation") & (pl.col("sample") == 0))


def build_variant_assets(experiment: Experiment) -> list[Any]:
    """The revision assets for one variant of one subject model, partitioned by its layers; the
    variant's settings are their configs' defaults, and its LLM the variant's."""
    SentenceConfig = experiment.config(RevisionSentenceConfig, "revision_sentences")
    ReviseConfig = experiment.config(RevisionConfig, "revisions")
    ScoreConfig = experiment.config(RevisionScoreConfig, "revision_scores")

    @dg.asset(
        group_name=GROUP,
        **experiment.llm_asset("revision_sentences", "explanations", "neuron_stats", resources=("subject_model",)),
    )
    def revision_sentences(
        context: dg.AssetExecutionContext,
        config: SentenceConfig,
        explanations: pl.DataFrame,
        neuron_stats: pl.DataFrame,
    ) -> pl.DataFrame:
        """Sentences the explainer wrote to make each neuron fire by its explanation, with the
        neuron's real activations on them, whether each is a false positive, and the
        revision/scoring split."""
        from neuron_assets.prompts.revision import SENTENCE_WRITER_PROMPT_VERSION
        from neuron_assets.revision.sentences import (
            mark_false_positives,
            measure_sentences,
            split_sentences,
            write_sentences_for_neurons,
        )

        if not 0 < config.n_revision < config.n_sentences:
            raise ValueError(
                f"n_revision ({config.n_revision}) must be between 1 and n_sentences - 1 ({config.n_sentences - 1})"
            )
        originals = _first_samples(explanations)
        llm = experiment.llm(context)
        explainer, _ = llm.model_names()
        client = llm.client()
        model = context.resources.subject_model.load(experiment.subject_model)
        if neuron_stats["subject_model"][0] != model.name:
            raise ValueError(
                f"the neurons were recorded on {neuron_stats['subject_model'][0]!r} but the subject model is "
                f"{model.name!r}: materialize activation_records again"
            )
        # Each sentence is preceded by the token the recording put before each excerpt.
        recorded_start = neuron_stats["document_start_token"][0]
        start = None if recorded_start is None else model.document_start_token_id(recorded_start)

        def sentences_for_side(polarity: str) -> pl.DataFrame:
            sign = 1.0 if polarity == "positive" else -1.0  # the negative side's activations are negated
            written = write_sentences_for_neurons(
                client,
                explainer,
                side(originals, polarity),
                n_sentences=config.n_sentences,
                seed=config.seed,
                concurrency=llm.max_concurrency,
                on_neuron=lambda layer, neuron: context.log.info(f"wrote sentences for layer {layer} neuron {neuron}"),
            )
            measured = measure_sentences(
                written,
                model.tokenize,
                model.token_text,
                lambda ids, layer, neuron: [
                    sign * a[:, 0] for a in model.activations_on_token_ids(ids, layer, [neuron], start)
                ],
                config.max_sentence_tokens,
            )
            marked = mark_false_positives(measured, side(neuron_stats, polarity), config.false_positive_fraction)
            return split_sentences(marked, config.n_revision, config.seed)

        frame = each_side(originals, sentences_for_side).join(
            originals.select("layer", "neuron", "polarity", "sample", "explanation"),
            on=["layer", "neuron", "polarity", "sample"],
        )
        frame = frame.with_columns(
            n_requested=pl.lit(config.n_sentences, dtype=pl.Int64),
            explainer_model=pl.lit(explainer),
            prompt_version=pl.lit(SENTENCE_WRITER_PROMPT_VERSION),
            false_positive_fraction=pl.lit(config.false_positive_fraction),
        ).drop("token_ids")
        per_neuron = frame.group_by("layer", "neuron", "polarity").agg(
            written=pl.len(),
            measured=pl.col("rejected_reason").is_null().sum(),
            false_positives=pl.col("is_false_positive").sum(),
        )
        short = per_neuron.filter(pl.col("written") < config.n_sentences)
        if len(short):
            context.log.warning(f"{len(short)} neuron(s) got fewer than {config.n_sentences} sentences: {short.rows()}")
        measured_rows = frame.filter(pl.col("rejected_reason").is_null())
        context.add_output_metadata(
            {
                "sentences": len(frame),
                "rejected_sentences": int(frame["rejected_reason"].is_not_null().sum()),
                "neurons_short_of_sentences": len(short),
                "false_positive_rate": float(measured_rows["is_false_positive"].mean() or 0.0),
                "neurons_with_a_false_positive": int((per_neuron["false_positives"] > 0).sum()),
                **client.stats.as_metadata(),
                "per_neuron": table(per_neuron.sort("layer", "neuron", "polarity")),
            }
        )
        frame = experiment.with_settings(frame, "revision_sentences", config, llm, upstream=explanations)
        return experiment.lineage(frame, context, "revision_sentences")

    @dg.asset(
        group_name=GROUP,
        **experiment.llm_asset("revisions", "revision_sentences", "activation_records", "explanations", "excerpts"),
    )
    def revisions(
        context: dg.AssetExecutionContext,
        config: ReviseConfig,
        revision_sentences: pl.DataFrame,
        activation_records: pl.DataFrame,
        explanations: pl.DataFrame,
        excerpts: pl.DataFrame,
    ) -> pl.DataFrame:
        """Revised explanations: the explainer revises each explanation shown its top excerpts and
        the revision split of its sentences with their real activations; optionally the two
        controls."""
        from neuron_assets.prompts.revision import REVISER_PROMPT_VERSION
        from neuron_assets.revision.reviser import check_kinds, revise_neurons, revision_jobs

        kinds = check_kinds(config.kinds)
        originals = _first_samples(explanations)
        llm = experiment.llm(context)
        explainer, _ = llm.model_names()
        client = llm.client()

        def revise_side(polarity: str) -> pl.DataFrame:
            jobs = revision_jobs(
                side(originals, polarity),
                side(activation_records, polarity),
                side(revision_sentences, polarity),
                excerpts,
                kinds,
                n_examples=config.n_examples,
                n_random_excerpts=config.n_random_excerpts,
                seed=config.seed,
            )
            missing = side(originals, polarity).join(jobs, on=["layer", "neuron"], how="anti")
            if len(missing):
                context.log.warning(
                    f"no new evidence to revise {polarity} (layer, neuron) {missing.select('layer', 'neuron').rows()}"
                )
            revised = revise_neurons(
                client,
                explainer,
                jobs,
                temperature=config.temperature,
                max_tokens=config.max_tokens,
                seed=config.seed,
                concurrency=llm.max_concurrency,
                on_neuron=lambda layer, neuron: context.log.info(f"revised layer {layer} neuron {neuron} ({polarity})"),
            )
            shown = jobs.select(
                "layer",
                "neuron",
                "sample",
                "revision_kind",
                "original_explanation",
                "shown_sentences",
                "shown_excerpt_ids",
            )
            return revised.join(shown, on=["layer", "neuron", "sample", "revision_kind"])

        frame = each_side(originals, revise_side).with_columns(
            explainer_model=pl.lit(explainer), prompt_version=pl.lit(REVISER_PROMPT_VERSION)
        )
        context.add_output_metadata(
            {
                "revisions": len(frame),
                "kinds": str(kinds),
                **client.stats.as_metadata(),
                "preview": table(
                    frame.select("layer", "neuron", "revision_kind", "original_explanation", "explanation").head(10)
                ),
            }
        )
        frame = experiment.with_settings(frame, "revisions", config, llm, upstream=revision_sentences)
        return experiment.lineage(frame, context, "revisions")

    @dg.asset(
        group_name=GROUP,
        **experiment.llm_asset(
            "revision_scores", "revisions", "revision_sentences", "explanations", "scoring_excerpts", "excerpts"
        ),
    )
    def revision_scores(
        context: dg.AssetExecutionContext,
        config: ScoreConfig,
        revisions: pl.DataFrame,
        revision_sentences: pl.DataFrame,
        explanations: pl.DataFrame,
        scoring_excerpts: pl.DataFrame,
        excerpts: pl.DataFrame,
    ) -> pl.DataFrame:
        """Original and revised explanations scored on the original scoring set and on the set
        extended by the scoring split of the generated sentences."""
        from neuron_assets.revision.reviser import ORIGINAL
        from neuron_assets.revision.scores import revision_scoring_inputs, score_revisions
        from neuron_assets.simulators.neurons import simulate_neurons

        llm = experiment.llm(context)
        client, simulator, mode, ten_handling, shift = llm.simulator(config.mode)
        originals = _first_samples(explanations)

        def score_side(polarity: str) -> pl.DataFrame:
            jobs = pl.concat(
                [
                    side(originals, polarity).select(
                        "layer", "neuron", "sample", "explanation", method=pl.lit(ORIGINAL)
                    ),
                    side(revisions, polarity).select(
                        "layer", "neuron", "sample", "explanation", method="revision_kind"
                    ),
                ],
                how="vertical",
            ).with_columns(explanation_neuron=pl.col("neuron"))
            scoring, texts = revision_scoring_inputs(
                side(scoring_excerpts, polarity), excerpts, side(revision_sentences, polarity)
            )
            simulations = simulate_neurons(
                client,
                simulator,
                jobs,
                scoring,
                texts,
                mode=mode,
                distribution_shift=shift,
                ten_handling=ten_handling,
                concurrency=llm.max_concurrency,
                on_neuron=lambda layer, neuron: context.log.info(
                    f"simulated revisions of layer {layer} neuron {neuron} ({polarity})"
                ),
            )
            named = jobs.select("layer", "neuron", "sample", pl.col("method").alias("revision_kind"), "explanation")
            settings = simulations.select(
                "simulator_model", "simulation_mode", "prompt_version", "ten_handling"
            ).unique()
            return (
                score_revisions(simulations)
                .join(named, on=["layer", "neuron", "sample", "revision_kind"])
                .join(settings, how="cross")
            )

        frame = each_side(originals, score_side)
        summary = (
            frame.group_by("revision_kind", "scoring_set")
            .agg(
                pl.col("correlation").mean().round(3).alias("mean"),
                pl.col("correlation").is_not_null().sum().alias("scored"),
            )
            .sort("revision_kind", "scoring_set")
        )
        context.add_output_metadata({"by_kind": table(summary), "simulation_mode": mode, **client.stats.as_metadata()})
        frame = experiment.with_settings(frame, "revision_scores", config, llm, upstream=revisions)
        return experiment.lineage(frame, context, "revision_scores")

    @dg.asset(group_name=GROUP, **experiment.asset("revision_comparisons", "revision_scores"))
    def revision_comparisons(context: dg.AssetExecutionContext, revision_scores: pl.DataFrame) -> pl.DataFrame:
        """Per layer, scoring set and kind: mean score, and the mean paired difference revised minus
        original with a bootstrap interval and the count of neurons improved."""
        from neuron_assets.baselines.controls import compare_methods
        from neuron_assets.revision.reviser import ORIGINAL

        by_method = revision_scores.rename({"revision_kind": "method"})
        compared = each_side(by_method, lambda polarity: compare_methods(side(by_method, polarity), reference=ORIGINAL))
        original = revision_scores.filter(pl.col("revision_kind") == ORIGINAL).select(
            "layer", "neuron", "polarity", "scoring_set", pl.col("correlation").alias("original")
        )
        improved = (
            revision_scores.join(original, on=["layer", "neuron", "polarity", "scoring_set"])
            .group_by("layer", "polarity", "scoring_set", "revision_kind")
            .agg(n_improved=(pl.col("correlation") > pl.col("original")).sum().cast(pl.Int64))
        )
        frame = (
            compared.rename({"method": "revision_kind"})
            .with_columns(
                revised_minus_original=-pl.col("explanation_minus_method"),
                difference_ci_low=-pl.col("difference_ci_high"),
                difference_ci_high=-pl.col("difference_ci_low"),
            )
            .drop("explanation_minus_method")
            .join(improved, on=["layer", "polarity", "scoring_set", "revision_kind"], how="left")
            .with_columns(pl.col("n_improved").fill_null(0))
        )
        shown = frame.select(
            "layer",
            "polarity",
            "scoring_set",
            "revision_kind",
            "n_paired",
            "n_improved",
            *(
                pl.col(c).round(3)
                for c in ("mean_score", "revised_minus_original", "difference_ci_low", "difference_ci_high")
            ),
        )
        context.add_output_metadata({"comparison": table(shown)})
        return experiment.lineage(frame, context, "revision_comparisons")

    return [revision_sentences, revisions, revision_scores, revision_comparisons]
