"""The fuzzing scorer (delphi's, EleutherAI): does the explanation say *which tokens* the neuron fires on?

Detection asks whether the neuron fires somewhere in an excerpt; an explanation naming the
excerpt's topic passes it without saying where. Fuzzing shows each excerpt with some tokens
marked ``<<like this>>`` and asks whether the marked tokens are the ones the neuron fires on
(answer 1 = the marking is correct):

- an activating example, by a seeded coin, either has its truly activating tokens marked
  (label "correct") or as many tokens that do not activate (label "incorrect");
- a non-activating example has random tokens marked (label "incorrect"), as many as some
  activating example's correct marking, so the number of marks says nothing about the label.

The truly activating tokens are those above ``threshold`` (default 0.5) of the excerpt's own
largest activation, at most ``max_marked`` (default 5) of them, the strongest first: a few
tokens an explanation should single out, not every token where the neuron stirs. Tokens that
do not activate are those at most ``silent_fraction`` (default 0.1, as in ``scorers.examples``)
of the excerpt's largest activation, so a wrong marking never lands on a half-activating token.
An activating example with no such token (every token activates) is marked correctly whatever
the coin says, and one with fewer than needed gets all it has.

Asking and reading are detection's (``scorers.answers``); the answers are scored against the
marking's label.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import polars as pl

from neuron_assets.prompts.classifiers import FUZZING_PROMPT_VERSION, fuzzing_messages
from neuron_assets.scorers.answers import BATCH_SIZE, ask_in_batches
from neuron_assets.scorers.classification import ClassifierMetrics, classifier_metrics
from neuron_assets.scorers.examples import SILENT_FRACTION

__all__ = ["FUZZING_PROMPT_VERSION", "MARK_THRESHOLD", "MAX_MARKED", "mark_examples", "score_fuzzing"]

MARK_THRESHOLD = 0.5  # a truly activating token: above this fraction of its excerpt's largest activation
MAX_MARKED = 5  # the most tokens marked in one excerpt (k)
FUZZING_SEED = 0  # the coins and draws of the markings
CORRECT, INCORRECT = "correct", "incorrect"


def activating_tokens(
    activations: Sequence[float], threshold: float = MARK_THRESHOLD, k: int = MAX_MARKED
) -> list[int]:
    """Positions of the at most ``k`` strongest tokens above ``threshold`` of the excerpt's largest
    activation, in text order; none for an excerpt whose largest activation is not positive."""
    peak = max(activations, default=0.0)
    if peak <= 0:
        return []
    above = [j for j, a in enumerate(activations) if a > threshold * peak]
    return sorted(sorted(above, key=lambda j: (-activations[j], j))[:k])


def mark_examples(
    examples: pl.DataFrame,
    *,
    threshold: float = MARK_THRESHOLD,
    max_marked: int = MAX_MARKED,
    silent_fraction: float = SILENT_FRACTION,
    seed: int = FUZZING_SEED,
) -> pl.DataFrame:
    """``examples`` (``select_examples``'s frame) with ``marked`` (token positions, in order) and
    ``marking`` ('correct' or 'incorrect') added, as described in the module's docstring.

    Deterministic for a seed: the coins and draws run in the frame's order."""
    rng = random.Random(seed)
    rows = list(examples.select("excerpt_id", "activating", "activations").iter_rows())
    correct = [activating_tokens(acts, threshold, max_marked) if active else [] for _, active, acts in rows]
    counts = [len(positions) for positions in correct if positions] or [1]
    marked: list[list[int]] = []
    marking: list[str] = []
    for (excerpt_id, active, acts), right in zip(rows, correct, strict=True):
        if active and not right:
            raise ValueError(f"excerpt {excerpt_id} is an activating example but no activation in it is positive")
        if active:
            wrong = [j for j, a in enumerate(acts) if a <= silent_fraction * max(acts)]
            if rng.random() < 0.5 or not wrong:
                marked.append(right)
                marking.append(CORRECT)
                continue
            marked.append(sorted(rng.sample(wrong, min(len(right), len(wrong)))))
        else:
            marked.append(sorted(rng.sample(range(len(acts)), min(rng.choice(counts), len(acts)))))
        marking.append(INCORRECT)
    return examples.with_columns(
        pl.Series("marked", marked, dtype=pl.List(pl.Int64)), pl.Series("marking", marking, dtype=pl.String)
    )


def score_fuzzing(
    client: Any,
    model: str,
    explanation: str,
    examples: pl.DataFrame,
    *,
    batch_size: int = BATCH_SIZE,
    use_logprobs: bool = False,
    threshold: float = MARK_THRESHOLD,
    max_marked: int = MAX_MARKED,
    silent_fraction: float = SILENT_FRACTION,
    seed: int = FUZZING_SEED,
) -> tuple[pl.DataFrame, ClassifierMetrics]:
    """Ask ``model`` whether each example's marked tokens are the ones the neuron fires on.

    ``examples``: ``select_examples``'s frame, marked by ``mark_examples`` and asked in its
    order, ``batch_size`` per chat call. Returns one row per example (excerpt_id, example_kind,
    activating, marking, marked, answer, probability, batch, prompt_tokens; see
    ``answers.ask_in_batches``) and the metrics of the answers against marking == 'correct'.
    """
    marked = mark_examples(
        examples, threshold=threshold, max_marked=max_marked, silent_fraction=silent_fraction, seed=seed
    )

    def messages(batch: pl.DataFrame) -> list[dict[str, str]]:
        return fuzzing_messages(explanation, batch["tokens"].to_list(), batch["marked"].to_list())

    asked = ask_in_batches(client, model, marked, messages, batch_size=batch_size, use_logprobs=use_logprobs).select(
        "excerpt_id",
        "example_kind",
        "activating",
        "marking",
        "marked",
        "answer",
        "probability",
        "batch",
        "prompt_tokens",
    )
    metrics = classifier_metrics(
        (asked["marking"] == CORRECT).to_list(),
        asked["answer"].to_list(),
        asked["probability"].to_list() if use_logprobs else None,
    )
    return asked, metrics
