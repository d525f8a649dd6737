import json
import math

import numpy as np
import pytest

from rcnn.evaluation.metrics import (
    average_precision,
    classification_metrics,
    confusion_matrix,
    format_metrics,
    pr_curves,
    precision_recall_curve,
)

NAMES2 = ["background", "car"]
NAMES3 = ["background", "car", "dog"]


def two_class_case():
    # Dyadic probabilities, so 1 - p(background) == p(car) exactly and no float tie breaks.
    p_car = np.array([0.875, 0.375, 0.75, 0.25, 0.125, 0.0625])
    labels = np.array([1, 1, 0, 0, 0, 0])
    return np.stack([1 - p_car, p_car], axis=1), labels


def three_class_case():
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # bg   -> bg
            [0.2, 0.5, 0.3],  # bg   -> car
            [0.1, 0.8, 0.1],  # car  -> car
            [0.2, 0.6, 0.2],  # car  -> car
            [0.1, 0.3, 0.6],  # car  -> dog
            [0.1, 0.1, 0.8],  # dog  -> dog
            [0.6, 0.1, 0.3],  # dog  -> bg
        ]
    )
    return probs, np.array([0, 0, 1, 1, 1, 2, 2])


def test_confusion_matrix_counts_pairs():
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])


def test_two_class_hand_computed():
    m = classification_metrics(*two_class_case(), NAMES2)
    # preds (argmax) = [1, 0, 1, 0, 0, 0]; labels = [1, 1, 0, 0, 0, 0]
    # bg: 4 true, 3 right, 1 called car; car: 2 true, 1 right, 1 called bg.
    assert m["count"] == 6
    assert m["confusion"] == [[3, 1], [1, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["recall"] == pytest.approx({"background": 3 / 4, "car": 1 / 2})
    # Column sums: bg predicted 4 times (3 right), car 2 times (1 right).
    assert m["precision"] == pytest.approx({"background": 3 / 4, "car": 1 / 2})
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert m["recipe_accuracy"] == pytest.approx(0.25 * 1 / 2 + 0.75 * 3 / 4)
    # Ranking by p(car): targets [1, 0, 1, 0, 0, 0] -> R steps 1/2 at P 1, 1/2 at P 2/3.
    assert m["ap"] == pytest.approx({"car": 1 / 2 * 1 + 1 / 2 * 2 / 3})
    assert m["mean_ap"] == pytest.approx(5 / 6)
    assert m["object_ap"] == pytest.approx(m["ap"]["car"])


def test_object_ap_equals_class_ap_for_two_classes_with_softmax_outputs():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 2)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 2, size=40)
    m = classification_metrics(probs, labels, NAMES2)
    assert m["object_ap"] == pytest.approx(m["ap"]["car"], abs=1e-6)


def test_three_class_hand_computed():
    m = classification_metrics(*three_class_case(), NAMES3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 1], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["recall"] == pytest.approx({"background": 1 / 2, "car": 2 / 3, "dog": 1 / 2})
    assert m["precision"] == pytest.approx({"background": 1 / 2, "car": 2 / 3, "dog": 1 / 2})
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    # 5 object regions, 3 given their own class (car->dog counts as wrong); bg recall 1/2.
    assert m["recipe_accuracy"] == pytest.approx(0.25 * 3 / 5 + 0.75 * 1 / 2)
    # car by p(car): 0.8+, 0.6+, 0.5-, 0.3+, ... -> 1/3*1 + 1/3*1 + 1/3*3/4.
    # dog by p(dog): 0.8+, 0.6-, then a 0.3 tie of one + and one - -> 1/2*1 + 1/2*2/4.
    assert m["ap"] == pytest.approx({"car": 11 / 12, "dog": 3 / 4})
    assert m["mean_ap"] == pytest.approx((11 / 12 + 3 / 4) / 2)
    # 1 - p(bg): three positives at 0.9, a 0.8 tie of one + and one -, 0.4+, 0.3-.
    assert m["object_ap"] == pytest.approx(3 / 5 * 1 + 1 / 5 * 4 / 5 + 1 / 5 * 5 / 6)


def test_absent_and_never_predicted_classes():
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    m = classification_metrics(probs, np.array([0, 1, 1]), NAMES3)
    assert m["recall"]["dog"] is None
    assert m["precision"]["dog"] == 0.0
    assert m["ap"]["dog"] is None
    assert m["mean_ap"] == pytest.approx(m["ap"]["car"])
    # Balanced accuracy averages only the classes present: bg 1, car 1/2.
    assert m["balanced_accuracy"] == pytest.approx(0.75)


def test_recipe_accuracy_uses_the_present_side_alone():
    only_bg = classification_metrics(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 0]), NAMES2)
    assert only_bg["recipe_accuracy"] == pytest.approx(0.5)
    assert only_bg["object_ap"] is None and only_bg["mean_ap"] is None
    only_car = classification_metrics(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([1, 1]), NAMES2)
    assert only_car["recipe_accuracy"] == pytest.approx(0.5)


def test_metrics_are_json_serialisable():
    for probs, labels, names in [(*two_class_case(), NAMES2), (*three_class_case(), NAMES3)]:
        m = classification_metrics(probs.astype(np.float32), labels.astype(np.int32), names)
        assert json.loads(json.dumps(m, allow_nan=False)) == m
    m = classification_metrics(np.array([[0.9, 0.05, 0.05]]), np.array([0]), NAMES3)
    json.dumps(m, allow_nan=False)


def test_average_precision_hand_ranking():
    # Targets by decreasing score: 1 0 1 1 0.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    targets = np.array([1, 0, 1, 1, 0], dtype=bool)
    expected = (1 / 3) * 1 + (1 / 3) * (2 / 3) + (1 / 3) * (3 / 4)
    assert average_precision(scores, targets) == pytest.approx(expected)
    precision, recall = precision_recall_curve(scores, targets)
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 1, 1])
    # Input order must not matter.
    perm = np.array([3, 0, 4, 1, 2])
    assert average_precision(scores[perm], targets[perm]) == pytest.approx(expected)


def test_ties_are_one_threshold_whatever_their_order():
    # 0.9+, then a 0.5 tie of one + and one -: P 2/3 at R 1, not P 1 or 1/2.
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    for targets in ([1, 1, 0, 0], [1, 0, 1, 0]):
        precision, recall = precision_recall_curve(scores, np.array(targets))
        np.testing.assert_allclose(precision, [1, 2 / 3, 1 / 2])
        np.testing.assert_allclose(recall, [1 / 2, 1, 1])
        assert average_precision(scores, np.array(targets)) == pytest.approx(1 / 2 + 1 / 2 * 2 / 3)


def test_precision_recall_curve_matches_brute_force():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 8, size=30) / 8  # many ties
    targets = rng.random(30) < 0.4
    precision, recall = precision_recall_curve(scores, targets)
    thresholds = np.unique(scores)[::-1]
    for t, p, r in zip(thresholds, precision, recall, strict=True):
        chosen = scores >= t
        assert p == pytest.approx(targets[chosen].mean())
        assert r == pytest.approx(targets[chosen].sum() / targets.sum())


def test_no_positive_gives_nan():
    assert math.isnan(average_precision(np.array([0.3, 0.2]), np.array([False, False])))
    _, recall = precision_recall_curve(np.array([0.3, 0.2]), np.array([0, 0]))
    assert np.isnan(recall).all()


def test_pr_curves_per_object_class():
    probs, labels = three_class_case()
    curves = pr_curves(probs, labels, NAMES3)
    assert list(curves) == ["car", "dog"]
    recall, precision, ap = curves["dog"]
    assert ap == pytest.approx(3 / 4)
    assert recall[-1] == 1.0 and len(precision) == len(recall)


def test_format_metrics_mentions_the_numbers():
    m = classification_metrics(*three_class_case(), NAMES3)
    text = format_metrics(m, NAMES3)
    assert "accuracy 0.571" in text
    assert "object AP 0.927" in text
    assert "dog" in text and "confusion" in text
    assert len(text.splitlines()) == 3 + len(NAMES3) + 2 + len(NAMES3)


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.zeros((3, 2)), np.array([0, 1]), "rows but labels"),
        (np.zeros((0, 2)), np.array([], dtype=int), "empty"),
        (np.zeros(3), np.array([0, 1, 1]), r"\[N, C\]"),
        (np.zeros((2, 3)), np.array([0, 1]), "class_names"),
        (np.zeros((2, 2)), np.array([0, 2]), r"0\.\.1"),
        (np.zeros((2, 2)), np.array([-1, 0]), r"0\.\.1"),
        (np.zeros((2, 2)), np.array([0.0, 1.0]), "integers"),
        (np.full((2, 2), np.nan), np.array([0, 1]), "finite"),
    ],
)
def test_bad_inputs_raise(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(probs, labels, NAMES2)


def test_bad_binary_inputs_raise():
    with pytest.raises(ValueError, match="equal length"):
        average_precision(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        precision_recall_curve(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 2)
