"""The detection scorer (delphi's, EleutherAI): can an LLM tell from the explanation alone which
excerpts make the neuron fire?

The LLM reads the explanation and a batch of excerpts (``prompts.classifiers.detection_messages``)
and answers 1 or 0 for each; the answers are scored against whether the excerpt is activating
(``scorers.examples``). Unlike the correlation score it needs no per-token simulation and no
log-probabilities, so any chat model can score; with log-probabilities (``use_logprobs``) the
graded answers give an AUROC too. Asking and reading are shared with fuzzing (``scorers.answers``).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from neuron_assets.prompts.classifiers import DETECTION_PROMPT_VERSION, detection_messages
from neuron_assets.scorers.answers import BATCH_SIZE, ask_in_batches
from neuron_assets.scorers.classification import ClassifierMetrics, classifier_metrics

__all__ = ["DETECTION_PROMPT_VERSION", "score_detection"]


def score_detection(
    client: Any,
    model: str,
    explanation: str,
    examples: pl.DataFrame,
    *,
    batch_size: int = BATCH_SIZE,
    use_logprobs: bool = False,
) -> tuple[pl.DataFrame, ClassifierMetrics]:
    """Ask ``model`` whether the neuron fires in each example, ``batch_size`` examples per chat call.

    ``examples``: ``scorers.examples.select_examples``'s frame (excerpt_id, example_kind,
    activating, tokens), asked in its order. Returns one row per example (excerpt_id,
    example_kind, activating, answer, probability, batch, prompt_tokens; see
    ``answers.ask_in_batches``) and the metrics of the answers against ``activating``: an
    unanswered example counts as "no"; AUROC from the probabilities with ``use_logprobs``, else None.
    """

    def messages(batch: pl.DataFrame) -> list[dict[str, str]]:
        return detection_messages(explanation, batch["tokens"].to_list())

    asked = ask_in_batches(client, model, examples, messages, batch_size=batch_size, use_logprobs=use_logprobs).select(
        "excerpt_id", "example_kind", "activating", "answer", "probability", "batch", "prompt_tokens"
    )
    metrics = classifier_metrics(
        asked["activating"].to_list(),
        asked["answer"].to_list(),
        asked["probability"].to_list() if use_logprobs else None,
    )
    return asked, metrics
