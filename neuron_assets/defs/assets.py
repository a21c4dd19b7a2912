"""The software-defined assets: corpus -> excerpts -> activations -> explanations -> simulations -> scores.

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


class ExplanationConfig(dg.Config):
    n_examples: int = Field(default=5, description="top excerpts shown to the explainer")
    n_samples: int = Field(default=1, description="explanations sampled per neuron")
    temperature: float = 1.0
    max_tokens: int = 60
    seed: int = 0


class SimulationConfig(dg.Config):
    n_top: int = Field(default=5, description="top scoring-pool excerpts per neuron")
    n_random: int = Field(default=5, description="random scoring-pool excerpts per neuron")
    mode: str = Field(
        default="auto",
        description=(
            "'auto' (what the backend supports), 'all_at_once' (prompt log-probabilities), "
            "'chat_logprobs' (generated-token top_logprobs), 'one_at_a_time' (a call per token, "
            "the reference) or 'json' (no log-probabilities)"
        ),
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
        """Record activations and statistics of the requested layers in one forward pass over the corpus."""
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
        records, stats = record_tables(recorders, RecordingSettings())
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

    @dg.asset(group_name=GROUP, partitions_def=partitions, backfill_policy=SINGLE_RUN)
    def explanations(
        context: dg.AssetExecutionContext,
        config: ExplanationConfig,
        llm: LLMResource,
        activation_records: pl.DataFrame,
        excerpts: pl.DataFrame,
    ) -> pl.DataFrame:
        """One-sentence explanation(s) per neuron, written by the explainer LLM from its top explanation-pool excerpts."""
        from neuron_assets.explainer import explain_neurons

        explainer, _ = llm.model_names()
        client = llm.client()
        frame = explain_neurons(
            client, explainer, activation_records, excerpts,
            n_examples=config.n_examples, n_samples=config.n_samples,
            temperature=config.temperature, max_tokens=config.max_tokens, seed=config.seed,
            concurrency=llm.max_concurrency,
            on_neuron=lambda layer, neuron: context.log.info(f"explained layer {layer} neuron {neuron}"),
        )  # fmt: skip
        shown = frame.join(
            activation_records.group_by("layer", "neuron").agg(pl.col("max_activation").max()),
            on=["layer", "neuron"],
        )
        context.add_output_metadata(
            {
                "explanations": len(frame),
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
        activation_records: pl.DataFrame,
        excerpts: pl.DataFrame,
    ) -> pl.DataFrame:
        """The simulator LLM's predicted activations, from the explanation alone, on each neuron's scoring excerpts."""
        from neuron_assets.simulator import resolve_mode, simulate_neurons

        _, simulator = llm.model_names()
        client = llm.client()
        mode = resolve_mode(client, simulator, config.mode)
        context.log.info(f"simulation mode: {mode} (asked for {config.mode})")
        frame = simulate_neurons(
            client, simulator, explanations, activation_records, excerpts,
            n_top=config.n_top, n_random=config.n_random, mode=mode,
            distribution_shift=llm.prompt_logprobs_shift, concurrency=llm.max_concurrency,
            on_neuron=lambda layer, neuron: context.log.info(f"simulated layer {layer} neuron {neuron}"),
        )  # fmt: skip
        context.add_output_metadata(
            {
                "simulated_excerpts": len(frame),
                "simulator_model": simulator,
                "simulation_mode": mode,
                "simulation_mode_requested": config.mode,
                "unsimulated_tokens": int(frame["n_unsimulated"].sum()),
                "misaligned_tokens": int(frame["n_misaligned"].sum()),
                **client.stats.as_metadata(),
                **llm.server_metadata(),
            }
        )
        return with_lineage(frame, context)

    @dg.asset(group_name=GROUP, partitions_def=partitions, backfill_policy=SINGLE_RUN)
    def scores(
        context: dg.AssetExecutionContext, simulations: pl.DataFrame, explanations: pl.DataFrame
    ) -> pl.DataFrame:
        """Each explanation's score: correlation of simulated with true activations, on top-and-random and random-only excerpts."""
        from neuron_assets.scoring import score_simulations

        frame = with_lineage(score_simulations(simulations), context)
        by_set = frame.join(explanations.select("layer", "neuron", "sample", "explanation"), on=["layer", "neuron", "sample"])
        summary = frame.group_by("scoring_set").agg(
            pl.col("correlation").mean().alias("mean"),
            pl.col("correlation").is_not_null().sum().alias("scored"),
            pl.col("correlation").is_null().sum().alias("undefined"),
        )
        context.add_output_metadata(
            {  # a mean never stands without how many scores it covers and how many it leaves out
                **{f"mean_{s}": float(m) for s, m, _, _ in summary.iter_rows() if m is not None},
                **{f"scored_{s}": int(n) for s, _, n, _ in summary.iter_rows()},
                **{f"undefined_{s}": int(n) for s, _, _, n in summary.iter_rows()},
                "undefined_scores": int(frame["correlation"].is_null().sum()),
                "top_and_random_preview": dg.MetadataValue.md(
                    _preview(by_set.filter(pl.col("scoring_set") == "top_and_random"), "correlation")
                ),
            }
        )
        return frame

    return [documents, excerpts, activation_records, explanations, simulations, scores]


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
