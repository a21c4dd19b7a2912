"""Metrics of a binary classifier, for the scorers that ask an LLM yes/no questions about excerpts.

The detection and fuzzing scorers (delphi's, EleutherAI) turn an explanation into a classifier:
the LLM reads the explanation and answers, per excerpt, 1 ("the neuron fires here" / "the
marked tokens are right") or 0. These functions score such answers against the truth.

Conventions, shared by every function here:

- a metric that is undefined on its inputs (no positive labels, no predicted positives, one
  class only) is ``None``, never NaN or a silent 0, as ``scorers.scoring`` does for the
  correlation score;
- an example the reply gave no answer for (``None``) is predicted "no": it is never guessed
  as "yes", and ``ClassifierMetrics.n_unanswered`` counts it, so a classifier cannot raise its
  score by staying silent where it would be wrong; for AUROC its score is 0.0, the lowest
  probability, for the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassifierMetrics:
    """How well one explanation's answers separate activating from non-activating examples.

    ``auroc`` is None when no scores were given (answers read without log-probabilities);
    any metric is None when undefined on these examples. ``n_activating`` counts the positive
    labels, ``n_unanswered`` the examples counted as "no" because the reply gave no answer.
    """

    balanced_accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    auroc: float | None
    n_examples: int
    n_activating: int
    n_unanswered: int


def _counts(labels: Sequence[bool | int], predicted: Sequence[bool | int | None]) -> tuple[int, int, int, int]:
    """(true positives, false positives, false negatives, true negatives); ``None`` predicts "no"."""
    if len(labels) != len(predicted):
        raise ValueError(f"{len(labels)} labels but {len(predicted)} predictions")
    truth = np.asarray([bool(x) for x in labels], dtype=bool)
    said = np.asarray([bool(x) if x is not None else False for x in predicted], dtype=bool)
    return (
        int(np.sum(truth & said)),
        int(np.sum(~truth & said)),
        int(np.sum(truth & ~said)),
        int(np.sum(~truth & ~said)),
    )


def balanced_accuracy(labels: Sequence[bool | int], predicted: Sequence[bool | int | None]) -> float | None:
    """Mean of the recall on positives and on negatives; None unless both classes are present.

    Unlike plain accuracy it is 0.5 for a classifier that always says the same thing, however
    unbalanced the examples."""
    tp, fp, fn, tn = _counts(labels, predicted)
    if tp + fn == 0 or tn + fp == 0:
        return None
    return (tp / (tp + fn) + tn / (tn + fp)) / 2


def precision(labels: Sequence[bool | int], predicted: Sequence[bool | int | None]) -> float | None:
    """Share of the examples predicted "yes" that are positive; None when none was predicted "yes"."""
    tp, fp, _, _ = _counts(labels, predicted)
    return None if tp + fp == 0 else tp / (tp + fp)


def recall(labels: Sequence[bool | int], predicted: Sequence[bool | int | None]) -> float | None:
    """Share of the positive examples predicted "yes"; None when there is no positive example."""
    tp, _, fn, _ = _counts(labels, predicted)
    return None if tp + fn == 0 else tp / (tp + fn)


def f1(labels: Sequence[bool | int], predicted: Sequence[bool | int | None]) -> float | None:
    """``2·TP / (2·TP + FP + FN)``, the harmonic mean of precision and recall.

    Written with counts, it is defined whenever there is a positive label or a positive
    prediction: a classifier that never says "yes" on examples with positives gets 0 (it found
    none), not None, so it cannot escape an average. None only when both counts are zero.
    """
    tp, fp, fn, _ = _counts(labels, predicted)
    return None if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def auroc(labels: Sequence[bool | int], scores: Sequence[float | None]) -> float | None:
    """Area under the ROC curve: the probability that a random positive example scores above a
    random negative one, a tie counting one half (the Mann-Whitney statistic with average ranks).

    A ``None`` score counts as 0.0. None unless both classes are present. Every
    (positive, negative) pair is compared, which is exact and fast for the hundreds of examples
    a neuron is scored on.
    """
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} scores")
    truth = np.asarray([bool(x) for x in labels], dtype=bool)
    values = np.asarray([0.0 if s is None else float(s) for s in scores], dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError("a score is NaN; give None for an example without a score")
    positive, negative = values[truth], values[~truth]
    if len(positive) == 0 or len(negative) == 0:
        return None
    above = (positive[:, None] > negative[None, :]).sum()
    tied = (positive[:, None] == negative[None, :]).sum()
    return float((above + 0.5 * tied) / (len(positive) * len(negative)))


def classifier_metrics(
    labels: Sequence[bool | int],
    answers: Sequence[int | None],
    scores: Sequence[float | None] | None = None,
) -> ClassifierMetrics:
    """All the metrics of ``answers`` (1, 0, or None for unanswered, which counts as 0) against
    ``labels``; AUROC from ``scores`` (a probability of "yes" per example), None without them."""
    if any(a not in (0, 1, None) or isinstance(a, float) for a in answers):
        raise ValueError(f"answers must be 0, 1 or None, got {sorted({repr(a) for a in answers})}")
    return ClassifierMetrics(
        balanced_accuracy=balanced_accuracy(labels, answers),
        precision=precision(labels, answers),
        recall=recall(labels, answers),
        f1=f1(labels, answers),
        auroc=None if scores is None else auroc(labels, scores),
        n_examples=len(labels),
        n_activating=sum(bool(x) for x in labels),
        n_unanswered=sum(a is None for a in answers),
    )
