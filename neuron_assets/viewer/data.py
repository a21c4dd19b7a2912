"""What the viewer shows, read from the stored Parquet files (never the DuckDB file, which a
pipeline run may be writing views into).

Every lookup that finds nothing raises a ``ViewerError`` whose message the page shows as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from neuron_assets.storage.layout import VARIANT_TABLES, prefix
from neuron_assets.storage.store import ResultStore

BASELINES = ("lookup_table", "weight_based", "lookup_explanation", "next_token_explanation", "control")


class ViewerError(LookupError):
    """Nothing stored for what a page asks: the message says what is missing and how to make it."""


@dataclass(frozen=True, order=True)
class ExperimentFolder:
    """A subject model's results folder and one variant of its LLM stages."""

    model: str
    variant: str


class ViewerData:
    """Reads one data directory's results for the viewer's pages."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store

    def experiments(self) -> list[ExperimentFolder]:
        """Every (subject model folder, variant) with stored scores."""
        return sorted(ExperimentFolder(*folder) for folder in self.store.folders("scores") if len(folder) == 2)

    def table(self, table: str, experiment: ExperimentFolder, layers: list[int] | None = None) -> pl.DataFrame:
        """``table``'s rows of the experiment (all stored layers unless ``layers``); a ``ViewerError`` when none."""
        folders = prefix(experiment.model, experiment.variant, table)
        stored = self.store.partitions(table, folders)
        wanted = stored if layers is None else [str(layer) for layer in layers if str(layer) in stored]
        if not wanted:
            where = f"subject model {experiment.model!r}" + (
                f", variant {experiment.variant!r}" if table in VARIANT_TABLES else ""
            )
            layer_text = "" if layers is None else f" for layer {', '.join(map(str, layers))}"
            raise ViewerError(f"no {table} stored for {where}{layer_text}: materialize them first")
        return self.store.read(table, wanted, folders)

    def check_experiment(self, experiment: ExperimentFolder) -> None:
        stored = self.experiments()
        if experiment not in stored:
            known = ", ".join(f"{e.model}/{e.variant}" for e in stored) or "none yet"
            raise ViewerError(
                f"no scores stored for subject model {experiment.model!r}, variant {experiment.variant!r} "
                f"(stored: {known})"
            )

    def layers(self, experiment: ExperimentFolder) -> list[int]:
        """The layers with stored scores, in order."""
        folders = prefix(experiment.model, experiment.variant, "scores")
        return sorted(int(p) for p in self.store.partitions("scores", folders))

    def neurons(
        self, experiment: ExperimentFolder, scores: pl.DataFrame, layers: list[int] | None = None
    ) -> pl.DataFrame:
        """One row per neuron side in ``scores`` (the experiment's, of ``layers``): its explanation
        (``explanation_text``), each method's score (samples averaged; a column per method,
        top-and-random, and ``<method> (random-only)``), its max activation."""
        per_method = (
            scores.group_by("layer", "neuron", "polarity", "method", "scoring_set")
            .agg(pl.col("correlation").mean())
            .with_columns(
                column=pl.when(pl.col("scoring_set") == "top_and_random")
                .then(pl.col("method"))
                .otherwise(pl.col("method") + " (random-only)")
            )
            .pivot(on="column", index=["layer", "neuron", "polarity"], values="correlation")
        )
        explanations = (
            self.table("explanations", experiment, layers)
            .filter((pl.col("method") == "explanation") & (pl.col("sample") == 0))
            .select("layer", "neuron", "polarity", pl.col("explanation").alias("explanation_text"))
        )
        stats = self.table("neuron_stats", experiment, layers).select(
            "layer", "neuron", "polarity", "max", "frac_firing"
        )
        return (
            per_method.join(explanations, on=["layer", "neuron", "polarity"], how="left")
            .join(stats, on=["layer", "neuron", "polarity"], how="left")
            .sort("layer", "neuron", pl.col("polarity"), descending=[False, False, True])
        )

    def neuron(self, experiment: ExperimentFolder, layer: int, neuron: int, polarity: str) -> dict[str, pl.DataFrame]:
        """Everything the neuron page shows, as frames keyed by what they are."""
        self.check_experiment(experiment)
        key = (pl.col("neuron") == neuron) & (pl.col("polarity") == polarity)
        recorded = self.table("neuron_stats", experiment, [layer])
        stats = recorded.filter(key)
        if stats.is_empty():
            sides = recorded.select("neuron", "polarity").unique().sort("neuron", "polarity").rows()
            raise ViewerError(
                f"neuron {neuron} ({polarity}) of layer {layer} was not recorded "
                f"for subject model {experiment.model!r}; "
                f"recorded: {', '.join(f'{n} ({p})' for n, p in sides)}"
            )
        excerpts = self.table("excerpts", experiment).select("excerpt_id", "tokens")
        records = self.table("activation_records", experiment, [layer]).filter(key).join(excerpts, on="excerpt_id")
        scores = self.table("scores", experiment, [layer]).filter(key)
        explanations = self.table("explanations", experiment, [layer]).filter(key)
        simulations = (
            self.table("simulations", experiment, [layer])
            .filter(
                key
                & (pl.col("method") == "explanation")
                & (pl.col("sample") == 0)
                & pl.col("excerpt_kind").is_in(["top", "random"])
            )
            .join(excerpts, on="excerpt_id")
        )
        other_sides = recorded.filter((pl.col("neuron") == neuron) & (pl.col("polarity") != polarity))[
            "polarity"
        ].to_list()
        return {
            "stats": stats,
            "records": records,
            "scores": scores,
            "explanations": explanations,
            "simulations": simulations,
            "other_sides": pl.DataFrame({"polarity": other_sides}, schema={"polarity": pl.String}),
        }
