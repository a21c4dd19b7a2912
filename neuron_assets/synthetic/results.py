"""A synthetic result set of the study's size (``make study-results``): every table the pipeline
writes up to the scores, for ``layers`` x ``neurons`` neurons, with random values of realistic
shapes, so the viewer and the SQL views can be measured where a researcher uses them.

Nothing here is a result: the values are drawn from a seeded generator. Rows per neuron are
the pipeline's defaults (20 top excerpts per pool, 20 random, 5 + 5 scored and 2 + 3
calibration excerpts of 64 tokens, an explanation and a lookup explanation simulated beside
the control, two token baselines), so each layer's files have the sizes a run of 6,400
neurons writes. Only the positive side is written (GPT-2's GELU neurons). The per-token
tables dominate (about 0.7 GB a layer), so ``token_layers`` can write them for the first
layers only; every other table covers every layer.

Every table goes through ``ResultStore.write``, so each file is validated by its pandera
model and written as the pipeline writes it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from neuron_assets.storage.layout import model_slug, prefix
from neuron_assets.storage.store import ResultStore

TOPICS = (
    "sports teams", "the word 'the'", "numbers in dates", "legal language", "cooking verbs", "closing brackets",
    "French words", "names of cities", "past-tense verbs", "medical terms", "the letter s at a word's end",
    "questions", "quotation marks", "programming keywords", "colours", "animals", "units of measure",
    "negation", "family members", "weather", "money amounts", "music", "chess moves", "plural nouns",
    "the start of a sentence", "words after 'of'", "emotions", "religious terms", "military ranks", "body parts",
)  # fmt: skip
FRAMES = ("words about {}", "tokens related to {}", "{}, mostly in lists", "mentions of {}", "{} and similar words")
WORDS = 5_000  # the pseudo-vocabulary the excerpts' tokens come from
RUN_ID = "synthetic"


@dataclass(frozen=True)
class StudyShape:
    """How much to write: the study's GPT-2 XL by default (48 layers x 6,400 neurons)."""

    layers: int = 48
    neurons: int = 6_400
    token_layers: int | None = None  # layers with the per-token tables; None: all
    excerpts: int = 200_000
    tokens: int = 64
    top_k: int = 20
    n_random: int = 20
    scored: tuple[int, int, int, int] = (5, 5, 2, 3)  # top, random, calibration top, calibration random
    seed: int = 0
    subject_model: str = "gpt2-xl"
    variant: str = "default"

    @property
    def model_folder(self) -> str:
        return model_slug(self.subject_model)


def explanation_texts(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` explanations, each a frame around a topic, so a search for either finds a known share."""
    topics = rng.integers(len(TOPICS), size=n)
    frames = rng.integers(len(FRAMES), size=n)
    return [FRAMES[f].format(TOPICS[t]) for f, t in zip(frames.tolist(), topics.tolist(), strict=True)]


def _lists(values: np.ndarray) -> pl.Series:
    """Rows of a 2-D array as a ``List`` column (what the schemas hold per-token values in)."""
    return pl.Series(values).cast(pl.List(pl.Float64 if values.dtype.kind == "f" else pl.Int64))


def _activations(rng: np.random.Generator, rows: int, tokens: int) -> np.ndarray:
    """GELU-like values: most tokens a little below zero, about a fifth firing."""
    return np.where(
        rng.random((rows, tokens)) < 0.2, rng.gamma(2.0, 1.5, (rows, tokens)), -0.17 * rng.random((rows, tokens))
    )


def _tags(shape: StudyShape, layer: int, variant: bool = False) -> dict[str, pl.Expr]:
    tags = {
        "run_id": pl.lit(RUN_ID),
        "partition": pl.lit(f"layer-{layer}"),
        "subject_model": pl.lit(shape.subject_model),
        "polarity": pl.lit("positive"),
    }
    if variant:
        tags |= {
            "variant": pl.lit(shape.variant),
            "run_settings": pl.lit('{"synthetic": true}'),
            "overridden_settings": pl.lit(None, dtype=pl.List(pl.String)),
        }
    return tags


def excerpts(shape: StudyShape, rng: np.random.Generator) -> pl.DataFrame:
    ids = rng.integers(WORDS, size=(shape.excerpts, shape.tokens))
    vocabulary = pl.Series([f" w{i}" for i in range(WORDS)])
    tokens = vocabulary.gather(ids.ravel()).reshape((shape.excerpts, shape.tokens)).cast(pl.List(pl.String))
    n_explanation = shape.excerpts // 2
    return pl.DataFrame(
        {
            "excerpt_id": np.arange(shape.excerpts),
            "corpus": "synthetic",
            "subject_model": shape.subject_model,
            "doc_id": np.arange(shape.excerpts) // 8,
            "pool": np.where(np.arange(shape.excerpts) < n_explanation, "explanation", "scoring"),
            "position": (np.arange(shape.excerpts) % 8) * shape.tokens,
            "token_ids": pl.Series(ids).cast(pl.List(pl.Int64)),
            "tokens": tokens,
        }
    )


def recording_tables(shape: StudyShape, layer: int, rng: np.random.Generator) -> dict[str, pl.DataFrame]:
    """``neuron_stats`` and ``token_lookup`` of one layer (small), every neuron."""
    n = shape.neurons
    neurons = np.arange(n)
    peak = rng.gamma(3.0, 2.0, n)
    stats = pl.DataFrame(
        {
            "corpus": "synthetic",
            "document_start_token": None,
            "layer": layer,
            "neuron": neurons,
            "mean": rng.normal(0.05, 0.05, n),
            "variance": rng.gamma(1.0, 0.2, n),
            "max": peak,
            "min": -0.17 * np.ones(n),
            "frac_firing": rng.beta(2, 8, n),
            "n_tokens": np.full(n, shape.excerpts * shape.tokens),
        },
        schema_overrides={"document_start_token": pl.String},
    ).with_columns(**_tags(shape, layer))
    per_neuron = 10
    lookup = pl.DataFrame(
        {
            "layer": layer,
            "neuron": np.repeat(neurons, per_neuron),
            "token_id": rng.integers(WORDS, size=n * per_neuron),
            "count": rng.integers(1, 500, size=n * per_neuron),
            "mean_activation": rng.gamma(2.0, 1.0, n * per_neuron),
        }
    ).with_columns(pl.format(" w{}", "token_id").alias("token"), **_tags(shape, layer))
    return {"neuron_stats": stats, "token_lookup": lookup}


def token_tables(shape: StudyShape, layer: int, rng: np.random.Generator) -> dict[str, pl.DataFrame]:
    """The per-token tables of one layer: ``activation_records``, ``scoring_excerpts``,
    ``simulations`` and ``token_predictions``."""
    n, t = shape.neurons, shape.tokens
    half = shape.excerpts // 2
    kinds = [
        ("explanation", "top", shape.top_k),
        ("scoring", "top", shape.top_k),
        ("scoring", "random", shape.n_random),
    ]
    per_neuron = sum(k for *_, k in kinds)
    values = _activations(rng, n * per_neuron, t)
    pool = np.concatenate([[p] * k for p, _, k in kinds])
    kind = np.concatenate([[c] * k for _, c, k in kinds])
    rank = np.concatenate([np.arange(k) for *_, k in kinds])
    offset = np.where(np.tile(pool, n) == "explanation", 0, half)
    records = pl.DataFrame(
        {
            "corpus": "synthetic",
            "layer": layer,
            "neuron": np.repeat(np.arange(n), per_neuron),
            "pool": np.tile(pool, n),
            "kind": np.tile(kind, n),
            "quantile_bin": None,
            "rank": np.tile(rank, n),
            "excerpt_id": offset + rng.integers(half, size=n * per_neuron),
            "document_start_token": None,
            "max_activation": values.max(axis=1),
            "activations": _lists(values),
        },
        schema_overrides={"quantile_bin": pl.String, "document_start_token": pl.String},
    ).with_columns(**_tags(shape, layer))
    scored_kinds = np.concatenate(
        [[k] * c for k, c in zip(("top", "random", "calibration_top", "calibration_random"), shape.scored, strict=True)]
    )
    m = len(scored_kinds)
    truth = _activations(rng, n * m, t)
    scoring = pl.DataFrame(
        {
            "layer": layer,
            "neuron": np.repeat(np.arange(n), m),
            "excerpt_id": half + rng.integers(half, size=n * m),
            "excerpt_kind": np.tile(scored_kinds, n),
            "activations": _lists(truth),
        }
    ).with_columns(**_tags(shape, layer))
    base = scoring.select(
        "layer", "neuron", "excerpt_id", "excerpt_kind", pl.col("activations").alias("true_activations")
    )
    simulated = []
    for method in ("explanation", "lookup_explanation", "control"):
        guess = np.clip(np.rint(truth * 2 + rng.normal(0, 2, truth.shape)), 0, 10)
        other = (np.repeat(np.arange(n), m) + 1) % n if method == "control" else np.repeat(np.arange(n), m)
        simulated.append(
            base.with_columns(
                sample=pl.lit(0),
                method=pl.lit(method),
                explanation_neuron=pl.Series(other),
                simulator_model=pl.lit("synthetic-simulator"),
                simulation_mode=pl.lit("all_at_once"),
                prompt_version=pl.lit("synthetic"),
                ten_handling=pl.lit("single_token"),
                simulated=_lists(guess),
                n_unsimulated=pl.lit(0),
                n_misaligned=pl.lit(0),
                prompt_tokens=pl.lit(1500),
                prompt_shortening=pl.lit(None, dtype=pl.String),
            )
        )
    predictions = [
        base.with_columns(method=pl.lit(method), predicted=_lists(truth * rng.random(truth.shape)))
        for method in ("lookup_table", "weight_based")
    ]
    return {
        "activation_records": records,
        "scoring_excerpts": scoring,
        "simulations": pl.concat(simulated).with_columns(**_tags(shape, layer, variant=True)),
        "token_predictions": pl.concat(predictions).with_columns(**_tags(shape, layer)),
    }


def llm_tables(shape: StudyShape, layer: int, rng: np.random.Generator) -> dict[str, pl.DataFrame]:
    """``explanations``, ``scores`` and ``method_comparisons`` of one layer."""
    n = shape.neurons
    neurons = np.arange(n)
    explanations = []
    for method in ("explanation", "lookup_explanation"):
        texts = (
            explanation_texts(rng, n)
            if method == "explanation"
            else [f"the token ' w{i}'" for i in rng.integers(WORDS, size=n)]
        )
        explanations.append(
            pl.DataFrame(
                {
                    "layer": layer,
                    "neuron": neurons,
                    "sample": 0,
                    "method": method,
                    "explanation": texts,
                    "raw_reply": texts,
                    "explainer_model": "synthetic-explainer",
                    "prompt_version": "synthetic",
                    "temperature": 1.0,
                    "excerpt_ids": pl.Series(rng.integers(shape.excerpts // 2, size=(n, 5))).cast(pl.List(pl.Int64)),
                    "prompt_shortening": None,
                },
                schema_overrides={"prompt_shortening": pl.String},
            )
        )
    centre = 0.25 - 0.003 * layer  # later layers score lower, as in the study
    means = {
        "explanation": centre,
        "lookup_explanation": centre - 0.05,
        "control": 0.0,
        "lookup_table": centre - 0.08,
        "weight_based": centre - 0.12,
    }
    scores = []
    for method, mean in means.items():
        for scoring_set, shift in (("top_and_random", 0.0), ("random_only", -0.1)):
            correlation = np.clip(rng.normal(mean + shift, 0.15, n), -1, 1)
            undefined = rng.random(n) < 0.01
            scores.append(
                pl.DataFrame(
                    {
                        "layer": layer,
                        "neuron": neurons,
                        "sample": 0,
                        "method": method,
                        "explanation_neuron": (neurons + 1) % n if method == "control" else neurons,
                        "scoring_set": scoring_set,
                        "correlation": np.where(undefined, np.nan, correlation),
                        "explained_variance": np.where(undefined, np.nan, correlation**2 - 0.05),
                        "calibration_slope": rng.gamma(2.0, 0.2, n),
                        "calibration_intercept": rng.normal(0, 0.1, n),
                        "n_calibration_tokens": 5 * shape.tokens,
                        "n_tokens": 10 * shape.tokens,
                        "n_unsimulated": 0,
                        "undefined": undefined,
                    }
                )
                .with_columns(
                    pl.col("correlation", "explained_variance").fill_nan(None),
                    undefined_reason=pl.when("undefined").then(pl.lit("the true activations are constant")),
                )
                .drop("undefined")
            )
    scores = pl.concat(scores)
    comparisons = (
        scores.group_by("layer", "scoring_set", "method")
        .agg(
            n_neurons=pl.col("correlation").count(),
            mean_score=pl.col("correlation").mean(),
            std=pl.col("correlation").std(),
        )
        .with_columns(
            mean_ci_low=pl.col("mean_score") - 1.96 * pl.col("std") / pl.col("n_neurons").sqrt(),
            mean_ci_high=pl.col("mean_score") + 1.96 * pl.col("std") / pl.col("n_neurons").sqrt(),
            n_paired=pl.col("n_neurons"),
        )
    )
    reference = comparisons.filter(pl.col("method") == "explanation").select(
        "scoring_set", reference=pl.col("mean_score")
    )
    comparisons = (
        comparisons.join(reference, on="scoring_set")
        .with_columns(
            explanation_minus_method=pl.when(pl.col("method") != "explanation").then(
                pl.col("reference") - pl.col("mean_score")
            )
        )
        .with_columns(
            difference_ci_low=pl.col("explanation_minus_method") - 0.01,
            difference_ci_high=pl.col("explanation_minus_method") + 0.01,
        )
        .drop("std", "reference")
    )
    tags = _tags(shape, layer, variant=True)
    return {
        "explanations": pl.concat(explanations).with_columns(**tags),
        "scores": scores.with_columns(**tags),
        "method_comparisons": comparisons.with_columns(
            **{k: v for k, v in tags.items() if k in ("run_id", "partition", "subject_model", "polarity", "variant")}
        ),
    }


def write_study_results(store: ResultStore, shape: StudyShape, log: Callable[[str], object] = print) -> dict[str, int]:
    """Write the synthetic set into ``store``; returns the rows written per table. Each layer's
    values come from their own seeded generator, so a layer is the same whatever else is written."""
    rows: dict[str, int] = {}

    def write(table: str, frame: pl.DataFrame, partition: str | None) -> None:
        # literals are Int32 and counts UInt32; the schemas hold Int64
        frame = frame.with_columns(pl.col(pl.Int32, pl.UInt32).cast(pl.Int64))
        store.write(table, frame, partition, prefix(shape.model_folder, shape.variant, table))
        rows[table] = rows.get(table, 0) + len(frame)

    write("excerpts", excerpts(shape, np.random.default_rng([shape.seed, 1 << 20])), None)
    token_layers = shape.layers if shape.token_layers is None else shape.token_layers
    for layer in range(shape.layers):
        started = time.perf_counter()
        rng = np.random.default_rng([shape.seed, layer])
        tables = recording_tables(shape, layer, rng) | llm_tables(shape, layer, rng)
        if layer < token_layers:
            tables |= token_tables(shape, layer, rng)
        for table, frame in tables.items():
            write(table, frame, str(layer))
        log(f"layer {layer}: {len(tables)} tables in {time.perf_counter() - started:.1f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/study", help="where to write (a folder or s3://bucket/prefix)")
    parser.add_argument("--layers", type=int, default=StudyShape.layers)
    parser.add_argument("--neurons", type=int, default=StudyShape.neurons)
    parser.add_argument("--token-layers", type=int, default=None, help="layers with the per-token tables (default all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.layers < 1 or args.neurons < 2:
        parser.error("--layers must be at least 1 and --neurons at least 2 (the control explains another neuron)")
    shape = StudyShape(args.layers, args.neurons, args.token_layers, seed=args.seed)
    store = ResultStore(args.data_dir)
    started = time.perf_counter()
    rows = write_study_results(store, shape)
    store.refresh_views()
    print(f"wrote {sum(rows.values()):,} rows in {time.perf_counter() - started:.0f} s to {store.location}:")
    for table, count in rows.items():
        print(f"  {table}: {count:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
