"""What the viewer shows, read from the stored Parquet files (never the DuckDB file, which a
pipeline run may be writing views into).

Every lookup that finds nothing raises a ``ViewerError`` whose message the page shows as is.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import polars as pl

from neuron_assets.storage.layout import VARIANT_TABLES, prefix
from neuron_assets.storage.schemas import TABLES, polars_schema
from neuron_assets.storage.store import UNPARTITIONED, ResultStore
from neuron_assets.viewer.index_query import IndexPage, IndexQuery, neuron_sides, query_index

SIDES_KEPT = 16  # aggregates kept (one per experiment and layer selection viewed); 25 MB each at 307,200 sides
# What the neuron page shows of the other scorers (detection, fuzzing, surprisal), when run.
CLASSIFIER_COLUMNS = [
    "method", "sample", "scorer", "balanced_accuracy", "auroc", "n_examples", "n_activating", "n_unanswered",
    "scorer_model",
]  # fmt: skip
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
        # (experiment, layers) -> (the files' signature, neuron_sides): paging and sorting reuse the
        # aggregate of the scores until a run replaces one of its files (the server serves threads)
        self._sides: dict[tuple[ExperimentFolder, tuple[str, ...]], tuple[tuple, pl.DataFrame]] = {}
        self._lock = threading.Lock()

    def experiments(self) -> list[ExperimentFolder]:
        """Every (subject model folder, variant) with stored scores."""
        return sorted(ExperimentFolder(*folder) for folder in self.store.folders("scores") if len(folder) == 2)

    def table(self, table: str, experiment: ExperimentFolder, layers: list[int] | None = None) -> pl.DataFrame:
        """``table``'s rows of the experiment (all stored layers unless ``layers``); a ``ViewerError`` when none."""
        folders = prefix(experiment.model, experiment.variant, table)
        stored = self.store.partitions(table, folders)
        wanted = stored if layers is None else [str(layer) for layer in layers if str(layer) in stored]
        if not wanted:
            raise _missing(table, experiment, layers)
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

    def index(self, experiment: ExperimentFolder, layers: list[int] | None, query: IndexQuery) -> IndexPage:
        """The index page ``query`` asks for, over the experiment's stored layers (or ``layers``)."""
        stored = [str(layer) for layer in self.layers(experiment)]
        wanted = stored if layers is None else [str(layer) for layer in layers if str(layer) in stored]
        if not wanted:
            raise _missing("scores", experiment, layers)
        return query_index(
            self.store, experiment.model, experiment.variant, wanted, query, self._neuron_sides(experiment, wanted)
        )

    def _neuron_sides(self, experiment: ExperimentFolder, layers: list[str]) -> pl.DataFrame:
        """``neuron_sides`` of the layers, kept while their ``scores`` and ``neuron_stats`` files are unchanged."""
        folders = [prefix(experiment.model, experiment.variant, t) for t in ("scores", "neuron_stats")]
        stored_stats = set(self.store.partitions("neuron_stats", folders[1]))
        recorded = [layer for layer in layers if layer in stored_stats]
        signature = self.store.signature("scores", layers, folders[0]) + self.store.signature(
            "neuron_stats", recorded, folders[1]
        )
        key = (experiment, tuple(layers))
        with self._lock:
            kept = self._sides.get(key)
        if kept is not None and kept[0] == signature:
            return kept[1]
        sides = neuron_sides(self.store, experiment.model, experiment.variant, layers, recorded)
        with self._lock:
            if len(self._sides) >= SIDES_KEPT:
                self._sides.pop(next(iter(self._sides)))
            self._sides[key] = (signature, sides)
        return sides

    def comparisons(self, experiment: ExperimentFolder, layers: list[int] | None = None) -> pl.DataFrame:
        """``method_comparisons`` of the layers (one row per layer, method and scoring set: small)."""
        return self.table("method_comparisons", experiment, layers)

    def rows(
        self,
        table: str,
        experiment: ExperimentFolder,
        layers: list[int] | None,
        where: str,
        parameters: list,
        columns: list[str] | None = None,
    ) -> pl.DataFrame:
        """The rows of ``table`` that ``where`` keeps, read from the files of ``layers`` only (``None``:
        the unpartitioned table); a ``ViewerError`` when the table has nothing stored there."""
        folders = prefix(experiment.model, experiment.variant, table)
        stored = self.store.partitions(table, folders)
        wanted = [UNPARTITIONED] if layers is None else [str(layer) for layer in layers]
        if not set(wanted) <= set(stored):
            raise _missing(table, experiment, layers)
        partitions = [None if p == UNPARTITIONED else p for p in wanted]
        return self.store.select(table, partitions, folders, where, parameters, columns)

    def neuron(self, experiment: ExperimentFolder, layer: int, neuron: int, polarity: str) -> dict[str, pl.DataFrame]:
        """Everything the neuron page shows, as frames keyed by what they are."""
        self.check_experiment(experiment)
        side, key = "neuron = ? AND polarity = ?", [neuron, polarity]
        both_sides = self.rows("neuron_stats", experiment, [layer], "neuron = ?", [neuron])
        stats = both_sides.filter(pl.col("polarity") == polarity)
        if stats.is_empty():
            stats_of = prefix(experiment.model, experiment.variant, "neuron_stats")
            with self.store.query_connection() as connection:
                sides = connection.execute(
                    f"SELECT DISTINCT neuron, polarity FROM {self.store.scan('neuron_stats', [str(layer)], stats_of)} "
                    "ORDER BY ALL LIMIT 20"
                ).fetchall()
            raise ViewerError(
                f"neuron {neuron} ({polarity}) of layer {layer} was not recorded "
                f"for subject model {experiment.model!r}; "
                f"recorded: {', '.join(f'{n} ({p})' for n, p in sides)}{', ...' if len(sides) == 20 else ''}"
            )
        records = self.rows("activation_records", experiment, [layer], side, key)
        scores = self.rows("scores", experiment, [layer], side, key)
        explanations = self.rows("explanations", experiment, [layer], side, key)
        simulations = self.rows(
            "simulations",
            experiment,
            [layer],
            f"{side} AND method = 'explanation' AND sample = 0 AND excerpt_kind IN ('top', 'random')",
            key,
        )
        shown = sorted(set(records["excerpt_id"].to_list()) | set(simulations["excerpt_id"].to_list()))
        in_list = f"excerpt_id IN ({', '.join('?' * len(shown))})" if shown else "false"
        excerpts = self.rows("excerpts", experiment, None, in_list, shown, ["excerpt_id", "tokens"])
        records = records.join(excerpts, on="excerpt_id")
        simulations = simulations.join(excerpts, on="excerpt_id")
        other_sides = both_sides.filter(pl.col("polarity") != polarity)["polarity"].to_list()
        classifier_of = prefix(experiment.model, experiment.variant, "classifier_scores")
        classified = (
            self.rows("classifier_scores", experiment, [layer], side, key, CLASSIFIER_COLUMNS)
            if str(layer) in self.store.partitions("classifier_scores", classifier_of)
            else pl.DataFrame(schema=polars_schema(TABLES["classifier_scores"], CLASSIFIER_COLUMNS))
        )
        return {
            "classifier_scores": classified,
            "stats": stats,
            "records": records,
            "scores": scores,
            "explanations": explanations,
            "simulations": simulations,
            "other_sides": pl.DataFrame({"polarity": other_sides}, schema={"polarity": pl.String}),
        }


def _missing(table: str, experiment: ExperimentFolder, layers: list[int] | None) -> ViewerError:
    """The error for a table with nothing stored for the experiment (in ``layers``): what to materialize."""
    where = f"subject model {experiment.model!r}" + (
        f", variant {experiment.variant!r}" if table in VARIANT_TABLES else ""
    )
    layer_text = "" if layers is None else f" for layer {', '.join(map(str, layers))}"
    return ViewerError(f"no {table} stored for {where}{layer_text}: materialize them first")
