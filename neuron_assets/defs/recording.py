"""Sampling and recording: corpus -> excerpts -> activation records, neuron statistics, token lookup table.

Recording is one forward pass over the corpus for every requested layer (a single-run
backfill), so its outputs come from one multi-asset.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from neuron_assets.defs.common import check_specs, every_quarter, frame_check, requested_layers, table, with_checks
from neuron_assets.defs.experiments import Experiment
from neuron_assets.defs.resources import SubjectModelResource
from neuron_assets.sampling.corpus import DEFAULT_CORPUS

GROUP = "recording"


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
    polarity: str = Field(
        default="positive",
        description=(
            "'positive', 'negative' (the negated activations: a gated MLP's large negative values) or 'both'; "
            "each side is explained and scored as its own rows"
        ),
    )


@frame_check("No document has excerpts in both pools.")
def pools_share_no_document(excerpts: pl.DataFrame) -> dg.AssetCheckResult:
    shared = excerpts.group_by("doc_id").agg(pl.col("pool").n_unique()).filter(pl.col("pool") > 1)
    return dg.AssetCheckResult(passed=shared.is_empty(), metadata={"shared_documents": len(shared)})


def build_model_assets(experiment: Experiment) -> list[Any]:
    """This domain's assets and checks for one subject model (shared by its variants)."""

    @dg.asset(group_name=GROUP, **experiment.asset("documents", partitioned=False))
    def documents(context: dg.AssetExecutionContext, config: CorpusConfig) -> pl.DataFrame:
        """Corpus documents the excerpts are cut from: the embedded Lee news corpus by default."""
        from neuron_assets.sampling.corpus import load_documents

        frame = load_documents(config.source)
        context.add_output_metadata({"documents": len(frame), "corpus": config.source})
        return frame

    @dg.asset(
        group_name=GROUP,
        check_specs=check_specs(experiment.key("excerpts"), None, pools_share_no_document),
        **experiment.asset("excerpts", "documents", partitioned=False),
    )
    def excerpts(
        context: dg.AssetExecutionContext,
        config: ExcerptConfig,
        subject_model: SubjectModelResource,
        documents: pl.DataFrame,
    ) -> Iterator[Any]:
        """Fixed-length excerpts (64 tokens by default) in the subject model's tokens; whole
        documents go to the explanation or the scoring pool."""
        from neuron_assets.sampling.excerpts import make_excerpts

        model = subject_model.load(experiment.subject_model)
        frame = make_excerpts(
            documents,
            model.tokenize,
            model.token_text,
            model.name,
            length=config.length,
            scoring_fraction=config.scoring_fraction,
            seed=config.seed,
        )
        pools = frame.group_by("pool").agg(pl.len(), pl.col("doc_id").n_unique().alias("documents"))
        metadata = {
            "excerpts_by_pool": table(pools.sort("pool")),
            "documents_too_short": documents.height - frame["doc_id"].n_unique(),
        }
        yield from with_checks(context, frame, pools_share_no_document, metadata=metadata)

    @dg.multi_asset(
        name=experiment.op_name("activation_records"),
        outs={
            "activation_records": experiment.out(
                "activation_records",
                GROUP,
                (
                    "Per selected neuron of the layer: its per-token activations on the top-k excerpts of each "
                    "pool (by maximum activation), on a uniform sample of scoring-pool excerpts, and on "
                    "quantile-bin samples for viewing."
                ),
            ),
            "neuron_stats": experiment.out(
                "neuron_stats",
                GROUP,
                (
                    "Per selected neuron of the layer: mean, variance, maximum, minimum and share of tokens "
                    "firing, over every token of every excerpt."
                ),
            ),
            "token_lookup": experiment.out(
                "token_lookup",
                GROUP,
                (
                    "The token lookup table: per selected neuron of the layer, the mean activation on each "
                    "token over the explanation pool (a baseline, method.md §6)."
                ),
            ),
        },
        ins=experiment.ins("excerpts"),
        partitions_def=experiment.partitions,
        backfill_policy=experiment.backfill_policy("activation_records"),
    )
    def activation_records(
        context: dg.AssetExecutionContext,
        config: RecordingConfig,
        subject_model: SubjectModelResource,
        excerpts: pl.DataFrame,
    ) -> Any:
        """Record activations, statistics and lookup tables of the requested layers in one forward pass."""
        from neuron_assets.baselines.token_baselines import token_texts
        from neuron_assets.recording.recorder import (
            NeuronSelection,
            RecordingSettings,
            random_sample,
            record,
            record_tables,
        )

        model = subject_model.load_for(experiment.subject_model, excerpts)
        layers = requested_layers(context)
        model.check_layers(layers)
        start = model.document_start_token(config.document_start_token)
        selection = NeuronSelection(config.selection, config.n_neurons, config.seed, tuple(config.neuron_indices))
        neurons = {layer: selection.resolve(model.d_mlp, layer) for layer in layers}
        recorders = record(
            model.run_with_mlp_hooks,
            excerpts,
            neurons,
            random_sample(excerpts, config.n_random, config.seed),
            start_token_id=None if start is None else start[0],
            batch_size=config.batch_size,
            top_k=config.top_k,
            progress=every_quarter(lambda done, total: context.log.info(f"recorded {done}/{total} excerpts")),
            polarity=config.polarity,
        )
        records, stats, lookup = record_tables(recorders, RecordingSettings())
        lookup = lookup.join(token_texts(excerpts), on="token_id").with_columns(subject_model=pl.lit(model.name))
        provenance = [
            pl.lit(model.name).alias("subject_model"),
            pl.lit(excerpts["corpus"][0]).alias("corpus"),
            pl.lit(None if start is None else start[1], dtype=pl.String).alias("document_start_token"),
        ]
        records = experiment.lineage(records.with_columns(provenance), context, "activation_records")
        stats = experiment.lineage(stats.with_columns(provenance), context, "neuron_stats")
        yield dg.Output(records, "activation_records", metadata={"layers": str(layers)})
        # Each side's stats hold the whole range: -min of one side is the max of the other.
        one_side = stats.filter(pl.col("polarity") == stats["polarity"][0])
        negative_range, positive_range = (
            (-one_side["min"], one_side["max"])
            if stats["polarity"][0] == "positive"
            else (one_side["max"], -one_side["min"])
        )
        yield dg.Output(
            stats,
            "neuron_stats",
            metadata={
                "neurons": len(one_side),
                "polarities": str(sorted(stats["polarity"].unique().to_list(), reverse=True)),
                "dead_neurons": int((stats.filter(pl.col("polarity") == "positive")["frac_firing"] == 0).sum()),
                "neurons_with_a_larger_negative_than_positive_range": int((negative_range > positive_range).sum()),
            },
        )
        yield dg.Output(
            experiment.lineage(lookup, context, "token_lookup"),
            "token_lookup",
            metadata={"distinct_tokens": lookup["token_id"].n_unique(), "rows": len(lookup)},
        )

    return [documents, excerpts, activation_records]
