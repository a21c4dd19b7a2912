"""The classifier scorers (detection, fuzzing, surprisal) over many neurons and explanations: one
row per neuron, explanation and scorer, with the examples it was asked about.

Every explanation of a neuron (its own, the lookup explanation, a control) is asked about the
same examples (``scorers.examples``), chosen once per neuron from the scoring pool, so the
scorers compare explanations as the correlation score does. The examples of every neuron are
chosen before any LLM call: a neuron with too few non-activating excerpts stops the step at
once, naming it. Neurons are scored ``concurrency`` at a time; a neuron whose replies cannot be
read fails alone and the failures are raised together (``llm.fan_out``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from neuron_assets.llm.errors import LLMError, ReplyFormatError
from neuron_assets.llm.fan_out import map_neurons
from neuron_assets.prompts.classifiers import (
    DETECTION_PROMPT_VERSION,
    FUZZING_PROMPT_VERSION,
    SURPRISAL_PROMPT_VERSION,
)
from neuron_assets.scorers.answers import BATCH_SIZE
from neuron_assets.scorers.detection import score_detection
from neuron_assets.scorers.examples import N_NON_ACTIVATING, N_TOP, SILENT_FRACTION, select_examples
from neuron_assets.scorers.fuzzing import CORRECT, score_fuzzing
from neuron_assets.scorers.methods import CLASSIFIER_SCORERS
from neuron_assets.scorers.surprisal import score_surprisal
from neuron_assets.storage.schemas import ClassifierScores, polars_schema

DETECTION, FUZZING, SURPRISAL = CLASSIFIER_SCORERS
SCORERS = tuple(CLASSIFIER_SCORERS)
PROMPT_VERSIONS = {
    DETECTION: DETECTION_PROMPT_VERSION,
    FUZZING: FUZZING_PROMPT_VERSION,
    SURPRISAL: SURPRISAL_PROMPT_VERSION,
}
JOB_COLUMNS = ("layer", "neuron", "sample", "method", "explanation_neuron", "explanation")
ROW_COLUMNS = (
    "layer",
    "neuron",
    "sample",
    "method",
    "explanation_neuron",
    "scorer",
    "balanced_accuracy",
    "precision",
    "recall",
    "f1",
    "auroc",
    "mean_gain_activating",
    "mean_gain_non_activating",
    "n_examples",
    "n_activating",
    "n_unanswered",
    "excerpt_ids",
    "example_kinds",
    "labels",
    "answers",
    "graded",
    "prompt_tokens",
)


def check_scorers(scorers: Sequence[str], where: str) -> list[str]:
    """``scorers`` without repeats, each one of ``SCORERS``; else a ``ValueError`` naming ``where``."""
    unknown = [s for s in scorers if s not in SCORERS]
    if unknown or not scorers:
        raise ValueError(f"{where}: {unknown or 'none'} not among the scorers {list(SCORERS)}")
    return list(dict.fromkeys(scorers))


def neuron_examples(
    explanations: pl.DataFrame,
    records: pl.DataFrame,
    excerpts: pl.DataFrame,
    *,
    n_top: int = N_TOP,
    n_non_activating: int = N_NON_ACTIVATING,
    silent_fraction: float = SILENT_FRACTION,
    seed: int = 0,
) -> dict[tuple[int, int], pl.DataFrame]:
    """The examples of every neuron ``explanations`` explains, chosen by ``select_examples`` from
    its ``records`` (one side) and the ``excerpts``: call it before any LLM call, so a neuron
    with too few examples, or none recorded, stops the step first, named."""
    explained = explanations.select("layer", "neuron").unique()
    chosen, problems = {}, []
    for (layer, neuron), group in records.join(explained, on=["layer", "neuron"]).group_by("layer", "neuron"):
        try:
            chosen[layer, neuron] = select_examples(
                group,
                excerpts,
                n_top=n_top,
                n_non_activating=n_non_activating,
                silent_fraction=silent_fraction,
                seed=seed,
            )
        except ValueError as error:  # every neuron that cannot be asked about is named at once
            problems.append(str(error))
    if problems:
        raise ValueError(f"{len(problems)} neuron(s) cannot be scored:\n" + "\n".join(sorted(problems)))
    unrecorded = sorted(set(explained.iter_rows()) - set(chosen))
    if unrecorded:
        raise ValueError(f"no activation records for the explained (layer, neuron) {unrecorded}: record them first")
    return chosen


def score_by_classifiers(
    client: Any,
    model: str,
    explanations: pl.DataFrame,
    examples: dict[tuple[int, int], pl.DataFrame],
    *,
    scorers: Sequence[str] = (DETECTION, FUZZING),
    batch_size: int = BATCH_SIZE,
    use_logprobs: bool = False,
    silent_fraction: float = SILENT_FRACTION,
    seed: int = 0,
    concurrency: int = 1,
    on_neuron: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """Every explanation of ``explanations`` (``JOB_COLUMNS``) scored by each of ``scorers``, on its
    neuron's ``examples`` (``neuron_examples``; ``silent_fraction`` and ``seed`` as they were chosen
    with, for fuzzing's markings).

    Returns ``ROW_COLUMNS`` plus ``scorer_model`` and ``prompt_version``: ``labels`` is what the
    scorer's metrics are against (activating for detection and surprisal; a correct marking for
    fuzzing), ``answers`` the written 0/1 answers (null where unanswered; none for surprisal),
    ``graded`` the probability of "yes" (with ``use_logprobs``) or surprisal's likelihood gain,
    per example in ``excerpt_ids``' order.
    """
    scorers = check_scorers(scorers, "scorers")
    jobs = explanations.select(JOB_COLUMNS).sort("layer", "neuron", "method", "sample")

    def score_one(scorer: str, explanation: str, asked: pl.DataFrame) -> dict[str, Any]:
        if scorer == SURPRISAL:
            scored, surprisal = score_surprisal(client, model, explanation, asked)
            return {
                "auroc": surprisal.auroc,
                "mean_gain_activating": surprisal.mean_gain_activating,
                "mean_gain_non_activating": surprisal.mean_gain_non_activating,
                "n_examples": surprisal.n_examples,
                "n_activating": surprisal.n_activating,
                "n_unanswered": 0,
                "labels": scored["activating"].to_list(),
                "answers": None,
                "graded": scored["gain"].to_list(),
                "prompt_tokens": int(scored["prompt_tokens"].sum()),
                "excerpt_ids": scored["excerpt_id"].to_list(),
                "example_kinds": scored["example_kind"].to_list(),
            }
        ask = score_detection if scorer == DETECTION else score_fuzzing
        options = {"seed": seed, "silent_fraction": silent_fraction} if scorer == FUZZING else {}
        scored, metrics = ask(
            client, model, explanation, asked, batch_size=batch_size, use_logprobs=use_logprobs, **options
        )
        labels = scored["activating"] if scorer == DETECTION else scored["marking"] == CORRECT
        return {
            "balanced_accuracy": metrics.balanced_accuracy,
            "precision": metrics.precision,
            "recall": metrics.recall,
            "f1": metrics.f1,
            "auroc": metrics.auroc,
            "n_examples": metrics.n_examples,
            "n_activating": metrics.n_activating,
            "n_unanswered": metrics.n_unanswered,
            "labels": labels.to_list(),
            "answers": scored["answer"].to_list(),
            "graded": scored["probability"].to_list() if use_logprobs else None,
            # one call per batch: its prompt counted once
            "prompt_tokens": int(scored.unique("batch")["prompt_tokens"].sum()),
            "excerpt_ids": scored["excerpt_id"].to_list(),
            "example_kinds": scored["example_kind"].to_list(),
        }

    def job(layer: int, neuron: int, neuron_jobs: pl.DataFrame) -> Callable[[], list[dict[str, Any]]]:
        def run() -> list[dict[str, Any]]:
            rows = []
            for sample, method, explanation_neuron, explanation in neuron_jobs.select(
                "sample", "method", "explanation_neuron", "explanation"
            ).iter_rows():
                for scorer in scorers:
                    try:
                        scored = score_one(scorer, explanation, examples[layer, neuron])
                    except (ReplyFormatError, LLMError) as error:
                        raise type(error)(f"{scorer} of the {method} explanation: {error}") from error
                    rows.append(
                        {
                            "layer": layer,
                            "neuron": neuron,
                            "sample": sample,
                            "method": method,
                            "explanation_neuron": explanation_neuron,
                            "scorer": scorer,
                            **scored,
                        }
                    )
            return rows

        return run

    per_neuron = map_neurons(
        "classifier scoring",
        [
            ((layer, neuron), job(layer, neuron, group))
            for (layer, neuron), group in jobs.group_by("layer", "neuron", maintain_order=True)
        ],
        expected_errors=(ReplyFormatError, LLMError),
        concurrency=concurrency,
        on_done=on_neuron,
    )
    rows = [row for neuron_rows in per_neuron for row in neuron_rows]
    schema = polars_schema(ClassifierScores, ROW_COLUMNS)
    return pl.DataFrame(rows, schema=schema).with_columns(
        scorer_model=pl.lit(model),
        prompt_version=pl.col("scorer").replace_strict(PROMPT_VERSIONS, return_dtype=pl.String),
    )
