"""The two puzzle tests of method.md §10: can the scorer pick the true explanation, and can the
explainer find it?

Scorer test: the true explanation, each false one and "the 3 most common high-activation
tokens" are simulated on every sentence of the puzzle and scored like a neuron's
explanation (correlation over all tokens pooled). The true one should rank first.

Explainer test: the explainer is shown the puzzle's sentences as a neuron's top records,
and its explanation is scored on the same sentences, beside the true explanation's score.

Puzzles go through the neuron simulator and explainer unchanged: each puzzle is simulated
as a synthetic neuron whose excerpts are its sentences.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from neuron_assets.explainers.explainer import explain
from neuron_assets.llm.errors import LLMError
from neuron_assets.llm.fan_out import NeuronFailures
from neuron_assets.prompts.fewshot import Record
from neuron_assets.prompts.templates import ExplanationParseError
from neuron_assets.puzzles.puzzle_file import Puzzle
from neuron_assets.scorers.scoring import score
from neuron_assets.simulators.neurons import simulate_neurons
from neuron_assets.storage.schemas import PuzzleExplanations, PuzzleScores, polars_schema

TRUE, FALSE, COMMON_TOKENS, GENERATED = "true", "false", "common_tokens", "generated"


class PuzzleFailures(RuntimeError):
    """The LLM work of some puzzles failed; the others' responses are cached, so a re-run redoes only these."""


def puzzle_failures(puzzles: Sequence[Puzzle], failures: NeuronFailures, what: str) -> PuzzleFailures:
    """``failures`` of the synthetic neurons (layer 0, neuron = a puzzle's index) named by their puzzles."""
    lines = [
        f"  puzzle {puzzles[neuron].name!r}: {message}" for (_, neuron), message in sorted(failures.failures.items())
    ]
    return PuzzleFailures(f"{what} failed for {len(lines)} puzzle(s):\n" + "\n".join(lines))


def common_tokens_explanation(tokens: Sequence[Sequence[str]], activations: Sequence[Sequence[float]]) -> str:
    """The study's fixed false candidate: the 3 tokens that most often carry a non-zero activation.

    Ties go to the token with the larger summed activation, then to the one seen first.
    """
    counts: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    for sentence_tokens, sentence_activations in zip(tokens, activations, strict=True):
        for token, value in zip(sentence_tokens, sentence_activations, strict=True):
            word = token.strip()
            if value > 0 and word:
                counts[word] += 1
                totals[word] += value
                first_seen.setdefault(word, len(first_seen))
    best = sorted(counts, key=lambda w: (-counts[w], -totals[w], first_seen[w]))[:3]
    return "the tokens " + ", ".join(f'"{w}"' for w in best)


def candidate_explanations(puzzles: Sequence[Puzzle]) -> pl.DataFrame:
    """(puzzle, candidate, candidate_kind, explanation): the true one first, then the false ones, then common tokens."""
    rows = []
    for puzzle in puzzles:
        explanations = [(TRUE, puzzle.explanation), *((FALSE, f) for f in puzzle.false_explanations)]
        explanations.append((COMMON_TOKENS, common_tokens_explanation(puzzle.tokens, puzzle.activations)))
        rows += [(puzzle.name, i, kind, text) for i, (kind, text) in enumerate(explanations)]
    return pl.DataFrame(
        rows,
        schema=polars_schema(PuzzleScores, ["puzzle", "candidate", "candidate_kind", "explanation"]),
        orient="row",
    )


def candidate_jobs(puzzles: Sequence[Puzzle], candidates: pl.DataFrame) -> pl.DataFrame:
    """``candidates`` as the jobs of synthetic neurons: a puzzle is (layer 0, neuron = its index in
    ``puzzles``), a candidate its explanation ``sample``, its kind the ``method``. A candidate of a
    puzzle that is not in ``puzzles`` is a ``ValueError``."""
    index = {p.name: i for i, p in enumerate(puzzles)}
    unknown = sorted(set(candidates["puzzle"]) - set(index))
    if unknown:
        raise ValueError(f"candidates name puzzles that are not in the puzzle file: {unknown}")
    neuron = pl.col("puzzle").replace_strict(index, return_dtype=pl.Int64)
    return candidates.with_columns(
        layer=pl.lit(0, dtype=pl.Int64),
        neuron=neuron,
        sample=pl.col("candidate"),
        method=pl.col("candidate_kind"),
        explanation_neuron=neuron,
    )


def puzzle_of(puzzles: Sequence[Puzzle]) -> pl.Expr:
    """The puzzle's name of a synthetic neuron (``candidate_jobs``' neuron column)."""
    return pl.col("neuron").replace_strict({i: p.name for i, p in enumerate(puzzles)}, return_dtype=pl.String)


def simulate_candidates(
    client: Any,
    model: str,
    puzzles: Sequence[Puzzle],
    candidates: pl.DataFrame,
    *,
    mode: str,
    ten_handling: str | None,
    distribution_shift: int = 0,
    concurrency: int = 1,
    on_puzzle: Callable[[str], None] | None = None,
) -> pl.DataFrame:
    """Simulate every candidate explanation on every sentence of its puzzle.

    Returns one row per (puzzle, candidate, sentence) with ``simulated`` and
    ``true_activations``, plus the simulator's model, mode, prompt version and 10-handling.
    """
    jobs = candidate_jobs(puzzles, candidates)
    sentences = (
        pl.DataFrame(
            [
                (i, s, tokens, values)
                for i, puzzle in enumerate(puzzles)
                for s, (tokens, values) in enumerate(zip(puzzle.tokens, puzzle.activations, strict=True))
            ],
            schema={
                "neuron": pl.Int64,
                "sentence": pl.Int64,
                "tokens": pl.List(pl.String),
                "activations": pl.List(pl.Float64),
            },
            orient="row",
        )
        .with_row_index("excerpt_id")
        .with_columns(pl.col("excerpt_id").cast(pl.Int64))
    )
    # A puzzle is a synthetic neuron (candidate_jobs), its sentences the scored excerpts.
    scoring = sentences.select(
        layer=pl.lit(0, dtype=pl.Int64),
        neuron="neuron",
        excerpt_id="excerpt_id",
        excerpt_kind=pl.lit("top"),
        activations="activations",
    )
    try:
        frame = simulate_neurons(
            client,
            model,
            jobs,
            scoring,
            sentences.select("excerpt_id", "tokens"),
            mode=mode,
            distribution_shift=distribution_shift,
            ten_handling=ten_handling,
            concurrency=concurrency,
            on_neuron=None if on_puzzle is None else (lambda _layer, neuron: on_puzzle(puzzles[neuron].name)),
        )
    except NeuronFailures as failures:
        raise puzzle_failures(puzzles, failures, "simulation") from failures
    return (
        frame.join(sentences.select("excerpt_id", "sentence"), on="excerpt_id")
        .with_columns(puzzle=puzzle_of(puzzles))
        .rename({"sample": "candidate"})
        .select(
            "puzzle",
            "candidate",
            "sentence",
            "simulated",
            "true_activations",
            "n_unsimulated",
            "simulator_model",
            "simulation_mode",
            "prompt_version",
            "ten_handling",
        )
    )


def score_candidates(simulations: pl.DataFrame) -> pl.DataFrame:
    """Per (puzzle, candidate): correlation of simulated with true activations over all its sentences."""
    rows = []
    for (puzzle, candidate), group in simulations.sort("sentence").group_by("puzzle", "candidate", maintain_order=True):
        result = score(group["simulated"].to_list(), group["true_activations"].to_list())
        rows.append(
            (puzzle, candidate, result.correlation, result.undefined_reason, result.n_tokens, result.n_unsimulated)
        )
    return pl.DataFrame(
        rows,
        schema=polars_schema(
            PuzzleScores, ["puzzle", "candidate", "correlation", "undefined_reason", "n_tokens", "n_unsimulated"]
        ),
        orient="row",
    )


def rank_candidates(scored: pl.DataFrame, column: str = "correlation") -> pl.DataFrame:
    """Add ``rank`` (1 = best by ``column``) within each puzzle and ``n_candidates``.

    Ties count against a candidate (its rank is 1 + the number of others scoring at least as
    well), so a scorer that gives everything the same score solves nothing; an undefined
    score ranks below every defined one.
    """
    value = pl.col(column).fill_null(float("-inf"))
    return scored.with_columns(
        rank=value.rank("max", descending=True).over("puzzle").cast(pl.Int64),
        n_candidates=pl.len().over("puzzle").cast(pl.Int64),
    )


def scorer_test(
    client: Any,
    model: str,
    puzzles: Sequence[Puzzle],
    *,
    mode: str,
    ten_handling: str | None,
    distribution_shift: int = 0,
    concurrency: int = 1,
    on_puzzle: Callable[[str], None] | None = None,
) -> pl.DataFrame:
    """Every candidate of every puzzle simulated, scored and ranked, with the simulator's model,
    mode, prompt version and 10-handling: the rows of ``puzzle_scores`` (lineage aside)."""
    candidates = candidate_explanations(puzzles)
    simulations = simulate_candidates(
        client,
        model,
        puzzles,
        candidates,
        mode=mode,
        ten_handling=ten_handling,
        distribution_shift=distribution_shift,
        concurrency=concurrency,
        on_puzzle=on_puzzle,
    )
    ranked = rank_candidates(candidates.join(score_candidates(simulations), on=["puzzle", "candidate"]))
    settings = simulations.select("puzzle", "simulator_model", "simulation_mode", "prompt_version", "ten_handling")
    return ranked.join(settings.unique("puzzle"), on="puzzle").with_columns(
        scorer=pl.lit("simulation"), metric=pl.col("correlation")
    )


def scorer_summary(ranked: pl.DataFrame) -> dict[str, float]:
    """Top-1 and top-2 counts of the true explanation, what chance would give, and how likely
    chance alone is to rank it first that often (``p_top_1``, see ``chance_of_at_least``)."""
    true = ranked.filter(pl.col("candidate_kind") == TRUE)
    top_1 = int((true["rank"] == 1).sum())
    return {
        "puzzles": len(true),
        "top_1": top_1,
        "top_2": int((true["rank"] <= 2).sum()),
        "chance_top_1": float((1 / true["n_candidates"]).sum()),
        "chance_top_2": float((true["n_candidates"].clip(upper_bound=2) / true["n_candidates"]).sum()),
        "p_top_1": chance_of_at_least(top_1, (1 / true["n_candidates"]).to_list()),
    }


def chance_of_at_least(successes: int, chances: Sequence[float]) -> float:
    """P(at least ``successes`` of independent trials succeed), trial i with probability ``chances[i]``.

    The test of a scorer against chance on the puzzles: a scorer that picks a candidate at
    random ranks puzzle i's true explanation first with probability 1 / its candidates; a
    small value (below 0.01, say) means the top-1 count is unlikely to be luck. Exact (the
    Poisson-binomial distribution, by dynamic programming over the trials)."""
    distribution = [1.0]
    for p in chances:
        distribution = [
            (distribution[k] if k < len(distribution) else 0.0) * (1 - p) + (distribution[k - 1] * p if k >= 1 else 0.0)
            for k in range(len(distribution) + 1)
        ]
    return float(min(1.0, sum(distribution[successes:])))


def explain_puzzles(
    client: Any,
    model: str,
    puzzles: Sequence[Puzzle],
    *,
    temperature: float = 1.0,
    max_tokens: int = 60,
    seed: int = 0,
) -> pl.DataFrame:
    """The explainer's explanation of each puzzle, shown all its sentences as the neuron's records."""
    rows = []
    failures = []
    for puzzle in puzzles:
        records = [Record(t, a) for t, a in zip(puzzle.tokens, puzzle.activations, strict=True)]
        try:
            (explanation,) = explain(client, model, records, temperature=temperature, max_tokens=max_tokens, seed=seed)
        except (ExplanationParseError, LLMError) as error:
            failures.append(f"  puzzle {puzzle.name!r}: {error}")
            continue
        rows.append((puzzle.name, explanation.text, explanation.raw_reply, explanation.shortening))
    if failures:
        raise PuzzleFailures(f"explanation failed for {len(failures)} puzzle(s):\n" + "\n".join(failures))
    return pl.DataFrame(
        rows,
        schema=polars_schema(PuzzleExplanations, ["puzzle", "explanation", "raw_reply", "prompt_shortening"]),
        orient="row",
    )
