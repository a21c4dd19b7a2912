"""The puzzle scorer test (method.md §10) for the classifier scorers: detection, fuzzing and surprisal
rank every candidate explanation of a puzzle by how well it tells the puzzle's sentences apart.

A puzzle is a synthetic neuron: its sentences with a non-zero activation are the activating
examples, its sentences where every activation is 0 the non-activating ones. Where a puzzle has
fewer silent sentences than firing ones, silent sentences of *other* puzzles are borrowed until
the two are as many (``BORROW_RULE``): they are silent for their own neuron and *assumed* silent
for this one, which a puzzle's author did not check; results say so. A candidate's metric is
detection's or fuzzing's balanced accuracy, or surprisal's AUROC, and it is ranked as the
simulation scorer's correlation is (ties count against).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from neuron_assets.llm.fan_out import NeuronFailures
from neuron_assets.puzzles.evaluation import (
    candidate_explanations,
    candidate_jobs,
    puzzle_failures,
    puzzle_of,
    rank_candidates,
)
from neuron_assets.puzzles.puzzle_file import Puzzle
from neuron_assets.scorers.classifier_neurons import PROMPT_VERSIONS, SURPRISAL, score_by_classifiers
from neuron_assets.scorers.examples import EXAMPLE_SCHEMA

BORROW_RULE = (
    "a puzzle with fewer silent sentences than firing ones borrows silent sentences of the other puzzles, "
    "drawn with seed {seed} + the puzzle's index, until both are as many; borrowed ones are assumed silent"
)


def puzzle_examples(puzzles: Sequence[Puzzle], seed: int = 0) -> dict[tuple[int, int], pl.DataFrame]:
    """Each puzzle's examples, keyed (0, its index) as a synthetic neuron of layer 0: firing
    sentences ('top'), its silent ones and borrowed ones ('non_activating'), in a seeded order;
    ``excerpt_id`` numbers sentences across the file (puzzle index x 1000 + sentence)."""
    sentences = [
        (i * 1000 + s, i, tokens, values)
        for i, puzzle in enumerate(puzzles)
        for s, (tokens, values) in enumerate(zip(puzzle.tokens, puzzle.activations, strict=True))
    ]
    silent = [row for row in sentences if max(row[3]) <= 0]
    chosen = {}
    for i in range(len(puzzles)):
        firing = [row for row in sentences if row[1] == i and max(row[3]) > 0]
        own = [row for row in silent if row[1] == i]
        others = [row for row in silent if row[1] != i]
        rng = np.random.default_rng(seed + i)
        wanted = max(0, len(firing) - len(own))
        borrowed = [others[k] for k in rng.permutation(len(others))[:wanted]]
        rows = [(e, "top", True, t, v) for e, _, t, v in firing]
        rows += [(e, "non_activating", False, t, [0.0] * len(t)) for e, _, t, _ in own + borrowed]
        frame = pl.DataFrame(rows, schema=EXAMPLE_SCHEMA, orient="row")
        chosen[0, i] = frame[rng.permutation(len(frame))]
    return chosen


def classifier_scorer_test(
    client: Any,
    model: str,
    puzzles: Sequence[Puzzle],
    scorer: str,
    *,
    batch_size: int = 5,
    use_logprobs: bool = False,
    seed: int = 0,
    concurrency: int = 1,
    on_puzzle: Callable[[str], None] | None = None,
) -> pl.DataFrame:
    """Every candidate of every puzzle scored by ``scorer`` and ranked: ``puzzle_scores``' rows
    (lineage aside), ``metric`` the balanced accuracy (detection, fuzzing) or AUROC (surprisal)."""
    candidates = candidate_explanations(puzzles)
    jobs = candidate_jobs(puzzles, candidates)
    examples = puzzle_examples(puzzles, seed)
    try:
        scored = score_by_classifiers(
            client,
            model,
            jobs,
            examples,
            scorers=[scorer],
            batch_size=batch_size,
            use_logprobs=use_logprobs,
            seed=seed,
            concurrency=concurrency,
            on_neuron=None if on_puzzle is None else (lambda _layer, neuron: on_puzzle(puzzles[neuron].name)),
        )
    except NeuronFailures as failures:
        raise puzzle_failures(puzzles, failures, scorer) from failures
    metric = pl.col("auroc") if scorer == SURPRISAL else pl.col("balanced_accuracy")
    n_tokens = {neuron: int(frame["tokens"].list.len().sum()) for (_, neuron), frame in examples.items()}
    frame = scored.select(
        puzzle=puzzle_of(puzzles),
        candidate=pl.col("sample"),
        metric=metric,
        n_tokens=pl.col("neuron").replace_strict(n_tokens, return_dtype=pl.Int64),
        n_unsimulated=pl.col("n_unanswered"),
        undefined_reason=pl.when(metric.is_null()).then(pl.lit(f"{scorer} gave no defined metric")),
    )
    ranked = rank_candidates(candidates.join(frame, on=["puzzle", "candidate"]), "metric")
    return ranked.with_columns(
        scorer=pl.lit(scorer),
        correlation=pl.lit(None, dtype=pl.Float64),
        simulator_model=pl.lit(model),
        simulation_mode=pl.lit(None, dtype=pl.String),
        prompt_version=pl.lit(PROMPT_VERSIONS[scorer]),
        ten_handling=pl.lit(None, dtype=pl.String),
    )
