"""Classification metrics for region classifiers (counts and curves from scikit-learn).

Labels follow :mod:`rcnn.data.labels`: ``BACKGROUND = 0`` and object classes ``1..K``;
``class_names`` is the full list with background at index 0, e.g. ``["background", "car"]``.

Region sets are heavily skewed towards background, so plain accuracy says little. Alongside it
we report balanced accuracy, the accuracy the training batch mix would show, and average
precision with sklearn's definition (no interpolation), so numbers can be compared with it.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np

from rcnn.data.labels import BACKGROUND

logger = logging.getLogger(__name__)

# R-CNN fine-tuning batches hold 32 object windows and 96 background windows (of 128), so
# training-time accuracy weights the two sides 1:3; "recipe_accuracy" reproduces that mix.
RECIPE_POSITIVE_FRACTION = 32 / 128


class PRCurve(NamedTuple):
    """A precision-recall curve, highest score first, and its average precision."""

    recall: np.ndarray
    precision: np.ndarray
    ap: float


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of each (true, predicted) class pair (scikit-learn's ``confusion_matrix``).

    Args:
        labels (ndarray[N]): true classes in ``0..num_classes-1``.
        preds (ndarray[N]): predicted classes in ``0..num_classes-1``.
        num_classes (int): C.

    Returns:
        ndarray[C, C] (int64): rows are true classes, columns predicted classes.
    """
    labels = _check_labels(labels, num_classes, "labels")
    preds = _check_labels(preds, num_classes, "preds")
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} must have the same shape")
    from sklearn import metrics as sk_metrics  # here: importing it takes seconds

    matrix = sk_metrics.confusion_matrix(labels, preds, labels=np.arange(num_classes))
    return matrix.astype(np.int64)


def precision_recall_curve(
    scores: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score threshold, highest threshold first.

    scikit-learn's ``precision_recall_curve`` without the (recall 0, precision 1) point it
    appends, in the other order. A sample counts as predicted positive at threshold ``t``
    when ``score >= t``; tied scores form one threshold, so the result does not depend on the
    order of tied samples.

    Args:
        scores (ndarray[N]): higher means more likely positive.
        targets (ndarray[N]): true where the sample is positive (any nonzero value).

    Returns:
        precision, recall (ndarray[T] float64 each): for the T distinct scores in decreasing
        order, so recall is non-decreasing. Recall is NaN throughout when no target is positive
        (scikit-learn would warn and set it to 1).
    """
    scores, targets = _check_binary(scores, targets)
    if not targets.any():
        count = len(np.unique(scores))
        return np.zeros(count), np.full(count, np.nan)
    from sklearn import metrics as sk_metrics  # here: importing it takes seconds

    precision, recall, _ = sk_metrics.precision_recall_curve(targets, scores)
    return precision[-2::-1].astype(np.float64), recall[-2::-1].astype(np.float64)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) * P_n`` over distinct thresholds, ``R_0 = 0``:
    scikit-learn's ``average_precision_score``, the area under the step PR curve, without the
    11-point or monotone interpolation of the VOC detection benchmark.

    Args:
        scores (ndarray[N]): higher means more likely positive.
        targets (ndarray[N]): true where the sample is positive.

    Returns:
        float: AP in ``[0, 1]``, or NaN when no target is positive.
    """
    scores, targets = _check_binary(scores, targets)
    if not targets.any():
        return math.nan
    from sklearn import metrics as sk_metrics  # here: importing it takes seconds

    return float(sk_metrics.average_precision_score(targets, scores))


def classification_metrics(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, balanced and recipe-mix accuracy, per-class P/R, confusion matrix and APs.

    Args:
        probs (ndarray[N, C]): class probabilities (softmax outputs); column 0 is background.
        labels (ndarray[N]): true classes in ``0..C-1``.
        class_names (list[str]): C names, background first.

    Returns:
        dict: JSON-serialisable (plain floats, ints, lists; NaN stored as None) with keys
        ``count``, ``accuracy``, ``balanced_accuracy``, ``recipe_accuracy``, ``confusion``,
        ``precision`` and ``recall`` (per class name), ``ap`` (per object class name),
        ``mean_ap`` and ``object_ap`` (object vs background, scored by ``1 - probs[:, 0]``).
    """
    probs, labels = _check_probs(probs, labels, class_names)
    num_classes = probs.shape[1]
    cm = confusion_matrix(labels, probs.argmax(axis=1), num_classes)
    correct = np.diag(cm).astype(np.float64)
    true_counts = cm.sum(axis=1)
    pred_counts = cm.sum(axis=0)
    # Absent class: recall undefined (NaN). Never-predicted class: precision 0, as sklearn does.
    recall = np.divide(
        correct, true_counts, out=np.full(num_classes, np.nan), where=true_counts > 0
    )
    precision = np.divide(correct, pred_counts, out=np.zeros(num_classes), where=pred_counts > 0)

    is_object = labels != BACKGROUND
    object_recall = correct[1:].sum() / is_object.sum() if is_object.any() else math.nan
    ap = {
        name: _none_if_nan(average_precision(probs[:, k], labels == k))
        for k, name in enumerate(class_names)
        if k != BACKGROUND
    }
    valid_ap = [v for v in ap.values() if v is not None]
    return {
        "count": len(labels),
        "accuracy": float(correct.sum() / len(labels)),
        "balanced_accuracy": float(np.nanmean(recall)),
        "recipe_accuracy": _mix(object_recall, recall[BACKGROUND], RECIPE_POSITIVE_FRACTION),
        "confusion": cm.tolist(),
        "precision": {name: float(p) for name, p in zip(class_names, precision, strict=True)},
        "recall": {name: _none_if_nan(r) for name, r in zip(class_names, recall, strict=True)},
        "ap": ap,
        "mean_ap": float(np.mean(valid_ap)) if valid_ap else None,
        "object_ap": _none_if_nan(average_precision(1.0 - probs[:, BACKGROUND], is_object)),
    }


def pr_curves(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, PRCurve]:
    """One-vs-rest precision-recall curve and AP of each object class (for plotting).

    Args:
        probs (ndarray[N, C]): class probabilities; column 0 is background.
        labels (ndarray[N]): true classes in ``0..C-1``.
        class_names (list[str]): C names, background first.

    Returns:
        dict: object class name -> its :class:`PRCurve`, as from
        :func:`precision_recall_curve` and :func:`average_precision` (ap NaN if absent).
    """
    probs, labels = _check_probs(probs, labels, class_names)
    curves = {}
    for k, name in enumerate(class_names):
        if k == BACKGROUND:
            continue
        precision, recall = precision_recall_curve(probs[:, k], labels == k)
        ap = average_precision(probs[:, k], labels == k)
        curves[name] = PRCurve(recall=recall, precision=precision, ap=ap)
    return curves


def format_metrics(m: dict, class_names: list[str]) -> str:
    """A short multi-line report of :func:`classification_metrics` output."""
    lines = [
        f"regions {m['count']}  accuracy {_fmt(m['accuracy'])}  "
        f"balanced {_fmt(m['balanced_accuracy'])}  recipe-mix {_fmt(m['recipe_accuracy'])}",
        f"object AP {_fmt(m['object_ap'])}  mean AP {_fmt(m['mean_ap'])}",
    ]
    width = max(len(name) for name in [*class_names, "class"])
    lines.append(f"{'class':<{width}}  precision  recall      AP")
    for name in class_names:
        ap = _fmt(m["ap"][name]) if name in m["ap"] else ""
        cells = f"{name:<{width}}  {_fmt(m['precision'][name]):>9}  {_fmt(m['recall'][name]):>6}"
        lines.append(f"{cells}  {ap:>6}".rstrip())
    cell = max(width, *(len(str(v)) for row in m["confusion"] for v in row))
    lines.append("confusion (rows true, cols predicted)")
    lines.append(" " * cell + "".join(f"  {name:>{cell}}" for name in class_names))
    for name, row in zip(class_names, m["confusion"], strict=True):
        lines.append(f"{name:<{cell}}" + "".join(f"  {v:>{cell}}" for v in row))
    return "\n".join(lines)


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise ValueError(f"{what} must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{what} must lie in 0..{num_classes - 1}, got values from {labels.min()} "
            f"to {labels.max()}; is class_names missing 'background' at index 0?"
        )
    return labels.astype(np.int64)


def _check_binary(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    if scores.ndim != 1 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must be 1-D of equal length, got {scores.shape}, {targets.shape}"
        )
    if scores.size == 0:
        raise ValueError("scores is empty; need at least one sample")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite; got NaN or inf")
    return scores, targets


def _check_probs(
    probs: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {probs.shape}")
    if probs.shape[1] != len(class_names):
        raise ValueError(
            f"probs has {probs.shape[1]} columns but class_names has {len(class_names)} names; "
            "class_names must include 'background' at index 0"
        )
    if probs.shape[1] < 2:
        raise ValueError("need at least 2 classes (background and one object class)")
    if probs.shape[0] == 0:
        raise ValueError("probs is empty; need at least one region")
    if not np.isfinite(probs).all():
        raise ValueError("probs must be finite; got NaN or inf")
    labels = _check_labels(labels, probs.shape[1], "labels")
    if len(labels) != len(probs):
        raise ValueError(f"probs has {len(probs)} rows but labels has {len(labels)}")
    return probs, labels


def _mix(positive: float, negative: float, positive_fraction: float) -> float:
    """Weighted mean of the two sides' accuracies; a missing (NaN) side drops out."""
    if math.isnan(positive):
        return float(negative)
    if math.isnan(negative):
        return float(positive)
    return float(positive_fraction * positive + (1.0 - positive_fraction) * negative)


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"
