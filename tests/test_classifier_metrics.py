"""The binary-classifier metrics of the detection and fuzzing scorers, against hand-computed cases."""

import pytest

from neuron_assets.scorers.classification import (
    ClassifierMetrics,
    auroc,
    balanced_accuracy,
    classifier_metrics,
    f1,
    precision,
    recall,
)

# Five examples, three positive. Predictions: 1, 0, unanswered, 1, 0.
# The unanswered one counts as "no": TP = 1, FN = 2, FP = 1, TN = 1.
LABELS = [1, 1, 1, 0, 0]
PREDICTED = [1, 0, None, 1, 0]


def test_balanced_accuracy_is_the_mean_of_the_recall_on_each_class():
    # recall on positives 1/3, on negatives 1/2: (1/3 + 1/2) / 2 = 5/12
    assert balanced_accuracy(LABELS, PREDICTED) == pytest.approx(5 / 12)


def test_precision_recall_and_f1_from_the_counts():
    assert precision(LABELS, PREDICTED) == pytest.approx(1 / 2)  # TP / (TP + FP) = 1 / 2
    assert recall(LABELS, PREDICTED) == pytest.approx(1 / 3)  # TP / (TP + FN) = 1 / 3
    assert f1(LABELS, PREDICTED) == pytest.approx(2 / 5)  # 2 TP / (2 TP + FP + FN) = 2 / (2 + 1 + 2)


def test_an_unanswered_example_counts_as_no_and_is_counted():
    metrics = classifier_metrics(LABELS, PREDICTED)
    assert metrics == ClassifierMetrics(
        balanced_accuracy=pytest.approx(5 / 12),
        precision=pytest.approx(1 / 2),
        recall=pytest.approx(1 / 3),
        f1=pytest.approx(2 / 5),
        auroc=None,  # no scores given
        n_examples=5,
        n_activating=3,
        n_unanswered=1,
    )
    # answering the unanswered one "yes" would have been a true positive: silence is never guessed as yes
    assert recall(LABELS, [1, 0, 1, 1, 0]) == pytest.approx(2 / 3)


def test_auroc_counts_each_tie_between_classes_as_one_half():
    # pairs (positive, negative): (0.9, 0.4) >, (0.9, 0.1) >, (0.4, 0.4) tie, (0.4, 0.1) >: (3 + 0.5) / 4
    # average ranks give the same: ranks 4 and 2.5 for the positives, U = 6.5 - 2·3/2 = 3.5, 3.5 / 4
    assert auroc([1, 1, 0, 0], [0.9, 0.4, 0.4, 0.1]) == pytest.approx(0.875)
    assert auroc([1, 0], [0.3, 0.3]) == pytest.approx(0.5)


def test_auroc_is_one_for_a_perfect_ranking_and_zero_for_a_reversed_one():
    assert auroc([0, 1, 0, 1], [0.1, 0.8, 0.2, 0.7]) == 1.0
    assert auroc([0, 1, 0, 1], [0.9, 0.1, 0.8, 0.2]) == 0.0


def test_a_missing_score_counts_as_the_lowest_probability():
    # (0.2 vs missing = 0.0) > and (0.2 vs 0.5) <: 1 / 2
    assert auroc([1, 0, 0], [0.2, None, 0.5]) == pytest.approx(0.5)


def test_undefined_metrics_are_none_never_nan():
    only_positives = classifier_metrics([1, 1], [1, 0], [0.9, 0.1])
    assert only_positives.balanced_accuracy is None
    assert only_positives.auroc is None
    assert only_positives.recall == pytest.approx(0.5)

    never_yes = classifier_metrics([1, 0], [0, 0])
    assert never_yes.precision is None  # no predicted positives
    assert never_yes.f1 == 0.0  # positives were there and none was found
    assert never_yes.balanced_accuracy == pytest.approx(0.5)

    no_positives_no_yes = classifier_metrics([0, 0], [0, None])
    assert no_positives_no_yes.recall is None
    assert no_positives_no_yes.precision is None
    assert no_positives_no_yes.f1 is None


def test_mismatched_lengths_and_bad_answers_are_errors():
    with pytest.raises(ValueError, match="2 labels but 1 predictions"):
        balanced_accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="answers must be 0, 1 or None"):
        classifier_metrics([1, 0], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        auroc([1, 0], [float("nan"), 0.1])
