"""The software-defined assets: corpus -> excerpts -> activations -> explanations -> simulations -> scores.

Beside the explanations run the baselines and controls every score is compared with:
the token lookup table (recorded with the activations), the token predictions of the
lookup-table and weight-based baselines, the lookup-table explanation, and each
neuron's control (another neuron's explanation). All are scored on the neuron's same
``scoring_excerpts``, and ``method_comparisons`` sets them side by side per layer.

Each asset is a thin wrapper: it reads config and resources, calls the pure core, adds
lineage columns and UI metadata. Layer-partitioned assets use a single-run backfill
policy, so a backfill of many layers is one run: one forward pass over the corpus
records every requested layer, and one LLM server serves all of them.
"""

from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from neuron_assets.corpus import DEFAULT_CORPUS
from neuron_assets.defs.partitions import layer_key_column, layer_of
from neuron_assets.defs.resources import LLMResource, SubjectModelResource
from neuron_assets.methods import EXPLAINED, SIMULATED, TOKEN_BASELINES

GROUP = "neurons"
SINGLE_RUN = dg.BackfillPolicy.single_run()


class CorpusConfig(dg.Config):
    source: str = Field(
        default=DEFAULT_CORPUS,
        description="'lee' (embedded news corpus), a folder of .txt/.jsonl/.parquet, or 'hf:NAME[:SPLIT]'",
    )


class ExcerptConfig(dg.Config):
    length: int = Field(default=64, description="tokens per excerpt")
    scoring_fraction: float = Field(default=0.5, description="share of documents kept for scoring")
    seed: int = 0


class RecordingConfig(dg.Config):
    selection: str = Field(default="random", description="all, first, random or list")
    n_neurons: int = Field(default=3, description="neurons per layer for 'first' and 'random'")
    neuron_indices: list[int] = Field(default_factory=list, description="neurons for 'list'")
    seed: int = 0
    top_k: int = Field(default=20, description="top excerpts kept per neuron and pool")
    n_random: int = Field(default=20, description="random scoring-pool excerpts kept per neuron")
    batch_size: int = 16
    document_start_token: str = Field(
        default="auto",
        description=(
            "token before each excerpt: 'auto' (<|endoftext|> where the vocabulary has it, else BOS), "
            "'none', or one token of the vocabulary"
        ),
    )


class ScoringExcerptConfig(dg.Config):
    n_top: int = Field(default=5, description="top scoring-pool excerpts scored per neuron")
    n_random: int = Field(default=5, description="random scoring-pool excerpts scored per neuron")
    n_calibration_top: int = Field(default=2, description="further top excerpts, held out to fit the calibration")
    n_calibration_random: int = Field(default=3, description="further random excerpts, held out to fit the calibration")


class ExplanationConfig(dg.Config):
    methods: list[str] = Field(
        default_factory=lambda: list(EXPLAINED),
        description="'explanation' (from top excerpts) and/or 'lookup_explanation' (from the token lookup table)",
    )
    n_examples: int = Field(default=5, description="top excerpts shown to the explainer")
    lookup_tokens: int = Field(default=20, description="top lookup-table tokens shown for a lookup explanation")
    lookup_min_count: int = Field(default=2, description="occurrences a token needs to be shown from the lookup table")
    n_samples: int = Field(default=1, description="explanations sampled per neuron")
    temperature: float = 1.0
    max_tokens: int = 60
    seed: int = 0


class SimulationConfig(dg.Config):
    methods: list[str] = Field(
        default_factory=lambda: list(SIMULATED),
        description="explanations to simulate: 'explanation', 'lookup_explanation', 'control' (another neuron's)",
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


def with_lineage(frame: pl.DataFrame, context: dg.AssetExecutionContext) -> pl.DataFrame:
    """Tag rows with the run that wrote them and their layer partition's key."""
    return frame.with_columns(run_id=pl.lit(context.run.run_id), partition=layer_key_column())


def requested_layers(context: dg.AssetExecutionContext) -> list[int]:
    return sorted(layer_of(key) for key in context.partition_keys)


def _preview(frame: pl.DataFrame, score_column: str, n: int = 3) -> str:
    """Markdown table of the best and worst rows by ``score_column`` (undefined scores apart)."""
    defined = frame.filter(pl.col(score_column).is_not_null()).sort(score_column, descending=True)
    shown = pl.concat([defined.head(n), defined.tail(n)]).unique(maintain_order=True) if len(defined) > 2 * n else defined
    columns = [c for c in ("layer", "neuron", "sample", "explanation", score_column) if c in shown.columns]
    table = _markdown(shown.select(columns).with_columns(pl.col(score_column).round(3)))
    undefined = len(frame) - len(defined)
    return table + (f"\n\n{undefined} row(s) with an undefined score (see `undefined_reason`)." if undefined else "")


def build_assets(partitions: dg.PartitionsDefinition) -> list[Any]:
    """All assets, partitioned by the subject model's layers."""

    @dg.asset(group_name=GROUP)
    def documents(context: dg.AssetExecutionContext, config: CorpusConfig) -> pl.DataFrame:
        """Corpus documents the excerpts are cut from: the embedded Lee news corpus by default."""
        from neuron_assets.corpus import load_documents

        frame = load_documents(config.source)
        context.add_output_metadata({"documents": len(frame), "corpus": config.source})
        return frame

    @dg.asset(group_name=GROUP)
    def excerpts(
        context: dg.AssetExecutionContext,
        config: ExcerptConfig,
        subject_model: SubjectModelResource,
        documents: pl.DataFrame,
    ) -> pl.DataFrame:
        """Fixed-length excerpts (64 tokens by default) in the subject model's tokens; whole documents go to the explanation or the scoring pool."""
        from neuron_assets.excerpts import make_excerpts

        model = subject_model.load()
        frame = make_excerpts(
            documents, model.tokenize, model.token_text, model.name,
            length=config.length, scoring_fraction=config.scoring_fraction, seed=config.seed,
        )  # fmt: skip
        pools = frame.group_by("pool").agg(pl.len(), pl.col("doc_id").n_unique().alias("documents"))
        context.add_output_metadata(
            {
                "excerpts_by_pool": dg.MetadataValue.md(_markdown(pools.sort("pool"))),
                "documents_too_short": documents.height - frame["doc_id"].n_unique(),
            }
        )
        return frame

    @dg.multi_asset(
        outs={
            "activation_records": dg.AssetOut(
                group_name=GROUP,
                description=(
                    "Per selected neuron of the layer: its per-token activations on the top-k excerpts of each "
                    "pool (by maximum activation), on a uniform sample of scoring-pool excerpts, and on "
                    "quantile-bin samples for viewing."
                ),
            ),
            "neuron_stats": dg.AssetOut(
                group_name=GROUP,
                description=(
                    "Per selected neuron of the layer: mean, variance, maximum, minimum and share of tokens "
                    "firing, over every token of every excerpt."
                ),
            ),
            "token_lookup": dg.AssetOut(
                group_name=GROUP,
                description=(
                    "The token lookup table: per selected neuron of the layer, the mean activation on each "
                    "token over the explanation pool (a baseline, method.md §6)."
                ),
            ),
        },
        partitions_def=partitions,
        backfill_policy=SINGLE_RUN,
    )
    def activation_records(
        context: dg.AssetExecutionContext,
        config: RecordingConfig,
        subject_model: SubjectModelResource,
        excerpts: pl.DataFrame,
    ) -> Any:
        """Record activations, statistics and lookup tables of the requested layers in one forward pass."""
        from neuron_assets.baselines import token_texts
        from neuron_assets.recording import (
            NeuronSelection, RecordingSettings, random_sample, record, record_tables,
        )  # fmt: skip
        from neuron_assets.subject_model import SubjectModelError

        model = subject_model.load()
        if excerpts["subject_model"][0] != model.name:
            raise SubjectModelError(
                f"excerpts were cut with {excerpts['subject_model'][0]!r}'s tokenizer but the subject "
                f"model is {model.name!r}: materialize 'excerpts' again"
            )
        layers = requested_layers(context)
        model.check_layers(layers)
        start = model.document_start_token(config.document_start_token)
        selection = NeuronSelection(
            config.selection, config.n_neurons, config.seed, tuple(config.neuron_indices)
        )
        neurons = {layer: selection.resolve(model.d_mlp, layer) for layer in layers}
        recorders = record(
            model.run_with_mlp_hooks,
            excerpts,
            neurons,
            random_sample(excerpts, config.n_random, config.seed),
            start_token_id=None if start is None else start[0],
            batch_size=config.batch_size,
            top_k=config.top_k,
            progress=_every_quarter(lambda done, total: context.log.info(f"recorded {done}/{total} excerpts")),
        )
        records, stats, lookup = record_tables(recorders, RecordingSettings())
        lookup = lookup.join(token_texts(excerpts), on="token_id").with_columns(subject_model=pl.lit(model.name))
        provenance = [
            pl.lit(model.name).alias("subject_model"),
            pl.lit(excerpts["corpus"][0]).alias("corpus"),
            pl.lit(None if start is None else start[1], dtype=pl.String).alias("document_start_token"),
        ]
        records = with_lineage(records.with_columns(provenance), context)
        stats = with_lineage(stats.with_columns(provenance), context)
        yield dg.Output(records, "activation_records", metadata={"layers": str(layers)})
        yield dg.Output(
            stats,
            "neuron_stats",
            metadata={"neurons": len(stats), "dead_neurons": int((stats["frac_firing"] == 0).sum())},
        )
        yield dg.Output(
            with_lineage(lookup, context),
            "token_lookup",
            metadata={"distinct_tokens": lookup["token_id"].n_unique(), "rows": len(lookup)},
        )

    @dg.asset(group_name=GROUP, partitions_def=partitions, backfill_policy=SINGLE_RUN)
    def scoring_excerpts(
        context: dg.AssetExecutionContext, config: ScoringExcerptConfig, activation_records: pl.DataFrame
    ) -> pl.DataFrame:
        """Each neuron's scoring excerpts (top and random) and held-out calibration excerpts: every method of a neuron is scored on these same tokens."""
        from neuron_assets.scoring import select_scoring_excerpts

        frame = select_scoring_excerpts(
            activation_records, config.n_top, config.n_random, config.n_calibration_top, config.n_calibration_random
        )
        kinds = frame.group_by("excerpt_kind").len().sort("excerpt_kind")
        context.add_output_metadata({"excerpts_by_kind": dg.MetadataValue.md(_markdown(kinds))})
        return with_lineage(frame, context)

    @dg.asset(group_name=GROUP, partitions_def=partitions, backfill_policy=SINGLE_RUN)
    def explanations(
        context: dg.AssetExecutionContext,
        config: ExplanationConfig,
        llm: LLMResource,
        activation_records: pl.DataFrame,
        token_lookup: pl.DataFrame,
        excerpts: pl.DataFrame,
    ) -> pl.DataFrame:
        """One-sentence explanation(s) per neuron, written by the explainer LLM from its top explanation-pool excerpts, and the lookup-table explanation baseline."""
        from neuron_assets.baselines import top_lookup_tokens
        from neuron_assets.explainer import explain_lookup_tables, explain_neurons
        from neuron_assets.methods import EXPLANATION, LOOKUP_EXPLANATION, check_methods

        methods = check_methods(config.methods, EXPLAINED, "explanations config 'methods'")
        explainer, _ = llm.model_names()
        client = llm.client()
        options = {
            "n_samples": config.n_samples, "temperature": config.temperature, "max_tokens": config.max_tokens,
            "seed": config.seed, "concurrency": llm.max_concurrency,
        }  # fmt: skip
        frames = []
        if EXPLANATION in methods:
            frames.append(
                explain_neurons(
                    client, explainer, activation_records, excerpts, n_examples=config.n_examples,
                    on_neuron=lambda layer, neuron: context.log.info(f"explained layer {layer} neuron {neuron}"),
                    **options,
                )  # fmt: skip
            )
        if LOOKUP_EXPLANATION in methods:
            top_tokens = top_lookup_tokens(
                token_lookup, token_lookup.select("token_id", "token").unique("token_id"),
                config.lookup_tokens, config.lookup_min_count,
            )  # fmt: skip
            frames.append(
                explain_lookup_tables(
                    client, explainer, top_tokens,
                    on_neuron=lambda layer, neuron: context.log.info(f"lookup-explained layer {layer} neuron {neuron}"),
                    **options,
                )  # fmt: skip
            )
        frame = pl.concat(frames, how="vertical")
        shown = frame.filter(pl.col("method") == EXPLANATION).join(
            activation_records.group_by("layer", "neuron").agg(pl.col("max_activation").max()),
            on=["layer", "neuron"],
        )
        context.add_output_metadata(
            {
                "explanations": len(frame),
                "methods": str(methods),
                "explainer_model": explainer,
                **client.stats.as_metadata(),
                **llm.server_metadata(),
                "preview_by_max_activation": dg.MetadataValue.md(_preview(shown, "max_activation")),
            }
        )
        return with_lineage(frame, context)

    @dg.asset(group_name=GROUP, partitions_def=partitions, backfill_policy=SINGLE_RUN)
    def simulations(
        context: dg.AssetExecutionContext,
        config: SimulationConfig,
        llm: LLMResource,
        explanations: pl.DataFrame,
        scoring_excerpts: pl.DataFrame,
        excerpts: pl.DataFrame,
    ) -> pl.DataFrame:
        """The simulator LLM's predicted activations, from the explanation alone, on each neuron's scoring and calibration excerpts; also for the lookup explanation and the control (another neuron's explanation)."""
        from neuron_assets.controls import control_explanations
        from neuron_assets.methods import CONTROL, check_methods
        from neuron_assets.simulator import probe_ten_handling, resolve_mode, simulate_neurons

        methods = check_methods(config.methods, SIMULATED, "simulations config 'methods'")
        own = explanations.with_columns(explanation_neuron=pl.col("neuron"))
        missing = [m for m in methods if m != CONTROL and m not in own["method"].unique().to_list()]
        if missing:
            raise ValueError(f"simulations asked for {missing}, but the explanations table holds none: add them to its 'methods'")
        to_simulate = [own.filter(pl.col("method").is_in(methods))]
        if CONTROL in methods:
            to_simulate.append(control_explanations(explanations, seed=config.control_seed))
        columns = ["layer", "neuron", "sample", "method", "explanation_neuron", "explanation"]
        jobs = pl.concat([frame.select(columns) for frame in to_simulate], how="vertical")
        _, simulator = llm.model_names()
        client = llm.client()
        mode = resolve_mode(client, simulator, config.mode)
        ten_handling = probe_ten_handling(client, simulator, mode)
        context.log.info(f"simulation mode: {mode} (asked for {config.mode}); the value 10 is read as {ten_handling}")
        frame = simulate_neurons(
            client, simulator, jobs, scoring_excerpts, excerpts, mode=mode,
            distribution_shift=llm.prompt_logprobs_shift, ten_handling=ten_handling, concurrency=llm.max_concurrency,
            on_neuron=lambda layer, neuron: context.log.info(f"simulated layer {layer} neuron {neuron}"),
        )  # fmt: skip
        context.add_output_metadata(
            {
                "simulated_excerpts": len(frame),
                "methods": str(methods),
                "simulator_model": simulator,
                "simulation_mode": mode,
                "simulation_mode_requested": config.mode,
                "ten_handling": ten_handling,
                "unsimulated_tokens": int(frame["n_unsimulated"].sum()),
                "misaligned_tokens": int(frame["n_misaligned"].sum()),
                **client.stats.as_metadata(),
                **llm.server_metadata(),
            }
        )
        return with_lineage(frame, context)

    @dg.asset(group_name=GROUP, partitions_def=partitions, backfill_policy=SINGLE_RUN)
    def token_predictions(
        context: dg.AssetExecutionContext,
        config: TokenBaselineConfig,
        subject_model: SubjectModelResource,
        token_lookup: pl.DataFrame,
        scoring_excerpts: pl.DataFrame,
        excerpts: pl.DataFrame,
    ) -> pl.DataFrame:
        """The token baselines' predictions on each neuron's scoring and calibration excerpts: the lookup table's and the weight-based ones (no LLM)."""
        from neuron_assets.baselines import lookup_fallback, predict_from_token_table, weight_based_table
        from neuron_assets.methods import LOOKUP_TABLE, WEIGHT_BASED, check_methods

        methods = check_methods(config.methods, TOKEN_BASELINES, "token_predictions config 'methods'")
        frames = []
        if LOOKUP_TABLE in methods:
            table = token_lookup.rename({"mean_activation": "value"})
            frames.append(predict_from_token_table(table, lookup_fallback(token_lookup), scoring_excerpts, excerpts, LOOKUP_TABLE))
        if WEIGHT_BASED in methods:
            model = subject_model.load()
            if excerpts["subject_model"][0] != model.name:
                raise ValueError(
                    f"excerpts were cut with {excerpts['subject_model'][0]!r}'s tokenizer but the subject "
                    f"model is {model.name!r}: materialize 'excerpts' again"
                )
            table = weight_based_table(model.direct_token_activations, scoring_excerpts, excerpts)
            frames.append(predict_from_token_table(table, None, scoring_excerpts, excerpts, WEIGHT_BASED))
        frame = pl.concat(frames, how="vertical")
        context.add_output_metadata({"predicted_excerpts": len(frame), "methods": str(methods)})
        return with_lineage(frame, context)

    @dg.asset(group_name=GROUP, partitions_def=partitions, backfill_policy=SINGLE_RUN)
    def scores(
        context: dg.AssetExecutionContext,
        simulations: pl.DataFrame,
        token_predictions: pl.DataFrame,
        explanations: pl.DataFrame,
    ) -> pl.DataFrame:
        """Every method's score per neuron: correlation of simulated (or predicted) with true activations on top-and-random and random-only excerpts, and explained variance under a held-out calibration."""
        from neuron_assets.scoring import score_simulations

        columns = ["layer", "neuron", "sample", "method", "explanation_neuron", "excerpt_id", "excerpt_kind",
                   "simulated", "true_activations"]  # fmt: skip
        predictions = token_predictions.with_columns(
            sample=pl.lit(0, dtype=pl.Int64),
            explanation_neuron=pl.lit(None, dtype=pl.Int64),
            simulated=pl.col("predicted"),
        )
        frame = with_lineage(
            score_simulations(pl.concat([simulations.select(columns), predictions.select(columns)])), context
        )
        named = explanations.select("layer", "neuron", "sample", "method", "explanation")
        by_set = frame.join(named, on=["layer", "neuron", "sample", "method"])
        summary = frame.group_by("method", "scoring_set").agg(
            pl.col("correlation").mean().alias("mean"),
            pl.col("correlation").is_not_null().sum().alias("scored"),
            pl.col("correlation").is_null().sum().alias("undefined"),
        ).sort("method", "scoring_set")
        context.add_output_metadata(
            {  # a mean never stands without how many scores it covers and how many it leaves out
                "by_method": dg.MetadataValue.md(_markdown(summary.with_columns(pl.col("mean").round(3)))),
                "undefined_scores": int(frame["correlation"].is_null().sum()),
                "top_and_random_preview": dg.MetadataValue.md(
                    _preview(
                        by_set.filter((pl.col("scoring_set") == "top_and_random") & (pl.col("method") == "explanation")),
                        "correlation",
                    )
                ),
            }
        )
        return frame

    @dg.asset(group_name=GROUP, partitions_def=partitions, backfill_policy=SINGLE_RUN)
    def method_comparisons(context: dg.AssetExecutionContext, scores: pl.DataFrame) -> pl.DataFrame:
        """Per layer and scoring set: each method's mean score and its paired difference from the explanation's, with bootstrap intervals."""
        from neuron_assets.controls import compare_methods

        frame = compare_methods(scores)
        shown = frame.filter(pl.col("scoring_set") == "top_and_random").select(
            "layer", "method", "n_neurons", *(pl.col(c).round(3) for c in (
                "mean_score", "explanation_minus_method", "difference_ci_low", "difference_ci_high"))
        )  # fmt: skip
        context.add_output_metadata({"top_and_random": dg.MetadataValue.md(_markdown(shown))})
        return with_lineage(frame, context)

    return [
        documents, excerpts, activation_records, scoring_excerpts, explanations, simulations,
        token_predictions, scores, method_comparisons,
    ]  # fmt: skip


def _every_quarter(log: Any) -> Any:
    """Wrap a (done, total) progress callback to fire at most once per quarter of the work."""
    reported = {0}

    def progress(done: int, total: int) -> None:
        quarter = 4 * done // total
        if quarter not in reported:
            reported.add(quarter)
            log(done, total)

    return progress


def _markdown(frame: pl.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)
