"""R-CNN's per-class linear SVMs on fc7 features, trained with hard-negative mining.

As in the original code (Girshick's ``rcnn_train.m`` and its Python port, Fast R-CNN's
``tools/train_svms.py``): for class k, the positives are the class's (non-difficult)
ground-truth boxes and the negatives are proposals overlapping every box of the class by
IoU < 0.3. Training starts from the positives and a first sample of negatives; each round then
scores every negative with the new SVMs, adds to the cache each one scoring above -1 (hard),
drops from it those below -1.2 (easy), and retrains, until a round adds no hard negative or
``rounds`` is reached. All classes share each pass over the features. The solver is
scikit-learn's ``LinearSVC`` (liblinear, hinge loss, dual), the one the Python port uses: the
problems are a few thousand cached examples per class, which liblinear solves in seconds, so a
batched GPU solver would save little. Features are scaled so that their mean L2 norm is 20,
and the scale is kept with the model.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from rcnn.errors import RcnnError
from rcnn.modeling.config import SVMConfig
from rcnn.modeling.linear import LinearHeads, feature_scale

logger = logging.getLogger(__name__)


class SVMModel(LinearHeads):
    """One linear SVM per class on scaled features: ``scores = scale * x @ weights.T + biases``
    (``weights [K, D]``, ``biases [K]``, float32)."""

    STEM, OFFSETS, MADE_BY = "svm", "biases", "rcnn train-svm"

    @property
    def biases(self) -> np.ndarray:
        return self.offsets

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``[N, K]`` SVM scores of raw (unscaled) features ``[N, D]``."""
        return (np.asarray(features, np.float32) * self.scale) @ self.weights.T + self.biases


def fit_svm(x: np.ndarray, y: np.ndarray, cfg: SVMConfig) -> tuple[np.ndarray, float]:
    """``(w, b)`` of liblinear's L2-regularized hinge-loss SVM; ``y`` in {+1, -1}."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    svm = LinearSVC(
        C=cfg.C,
        class_weight={1: cfg.pos_weight, -1: 1.0},
        intercept_scaling=cfg.bias,
        loss="hinge",
        penalty="l2",
        dual=True,
        max_iter=cfg.max_iter,
        random_state=cfg.seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm.fit(x, y)
    return svm.coef_[0].astype(np.float32), float(svm.intercept_[0])


def svm_objective(w, b, x, y, cfg: SVMConfig) -> float:
    """liblinear's primal: ``0.5 (|w|^2 + (b / bias)^2) + C sum_i c_i max(0, 1 - y_i f(x_i))``
    with ``c_i`` the positive weight for positives and 1 for negatives."""
    margins = np.maximum(0.0, 1.0 - y * (x @ w + b))
    weight = np.where(y > 0, cfg.pos_weight, 1.0)
    return float(0.5 * (w @ w + (b / cfg.bias) ** 2) + cfg.C * (weight * margins).sum())


def update_cache(
    cache: np.ndarray, candidates: np.ndarray, scores: np.ndarray, hard: float, easy: float
) -> tuple[np.ndarray, int, int]:
    """One round of hard-negative mining.

    Args:
        cache: negatives (sorted region indices) the last SVM was trained on.
        candidates: every negative of the class (sorted; the cache is a subset);
            ``scores``: their scores under the new SVM.

    Returns:
        The new cache (sorted), how many hard negatives it gained (scoring above ``hard``,
        not cached yet) and how many easy ones it lost (cached, scoring below ``easy``).
    """
    cached = np.zeros(len(candidates), bool)
    cached[np.searchsorted(candidates, cache)] = True
    keep = cached & (scores >= easy)
    added = ~cached & (scores > hard)
    new = np.sort(np.concatenate([candidates[keep], candidates[added]]))
    return new, int(added.sum()), int(len(cache) - keep.sum())


@dataclass
class ClassExamples:
    """The training examples of one class: positive and candidate negative region indices."""

    positives: np.ndarray
    negatives: np.ndarray


def class_examples(regions, k: int, neg_iou: float) -> ClassExamples:
    """Non-difficult ground-truth regions of class ``k`` and proposals below ``neg_iou``."""
    truth = regions.require_truth("train-svm")
    gt_row = np.maximum(truth.gt_index, 0)
    positives = np.flatnonzero(
        truth.is_gt & (regions.labels == k) & (truth.gt_index >= 0) & ~truth.difficult[gt_row]
    )
    negatives = np.flatnonzero(~truth.is_gt & (truth.class_ious[:, k - 1] < neg_iou))
    return ClassExamples(positives, negatives)


def score_rows(features, rows: np.ndarray, weights, biases, scale, block: int = 16384):
    """``[len(rows), K]`` scores of the given regions, reading the features in blocks."""
    out = np.empty((len(rows), len(biases)), np.float32)
    for start in range(0, len(rows), block):
        part = rows[start : start + block]
        out[start : start + len(part)] = features.rows(part) * scale @ weights.T + biases
    return out


def train_svms(regions, features, cfg: SVMConfig, progress=None) -> tuple[SVMModel, list[dict]]:
    """Trains every class's SVM with hard-negative mining; returns the model and the log
    (one row per class and round)."""
    num_classes = len(regions.classes)
    if not regions.info.get("labels", {}).get("add_gt"):
        raise RcnnError(
            f"the regions of split '{regions.info.get('split', '?')}' were prepared without "
            "their ground-truth boxes, which the SVMs take as positives (and without the "
            "proposals that touch no object, which they need as negatives): prepare them with "
            "`rcnn prepare --preset paper`"
        )
    examples = [class_examples(regions, k, cfg.neg_iou) for k in range(1, num_classes + 1)]
    for k, ex in enumerate(examples, start=1):
        if len(ex.positives) == 0:
            raise RcnnError(
                f"class {regions.classes[k - 1]!r} has no ground-truth region: the SVMs take the "
                "ground-truth boxes as positives; prepare the regions with `--preset paper`"
            )
        if len(ex.negatives) == 0:
            raise RcnnError(f"class {regions.classes[k - 1]!r} has no negative region")
    scale = feature_scale(features, seed=cfg.seed, norm=cfg.feature_norm)
    rng = np.random.default_rng(cfg.seed)
    caches = [
        np.sort(rng.choice(ex.negatives, min(len(ex.negatives), cfg.first_negatives), False))
        for ex in examples
    ]
    positives = [features.rows(ex.positives) * scale for ex in examples]
    weights = np.zeros((num_classes, features.dim), np.float32)
    biases = np.zeros(num_classes, np.float32)
    active = list(range(num_classes))
    log: list[dict] = []
    everyone = np.unique(np.concatenate([ex.negatives for ex in examples]))
    for round_ in range(cfg.rounds + 1):
        for c in active:
            x_neg = features.rows(caches[c]) * scale
            x = np.concatenate([positives[c], x_neg])
            y = np.concatenate([np.ones(len(positives[c])), -np.ones(len(x_neg))])
            weights[c], biases[c] = fit_svm(x, y, cfg)
            log.append(
                {
                    "class": regions.classes[c],
                    "round": round_,
                    "positives": len(positives[c]),
                    "negatives_in_cache": len(caches[c]),
                    "objective": svm_objective(weights[c], biases[c], x, y, cfg),
                }
            )
        if progress is not None:
            progress(round_, log)
        if round_ == cfg.rounds:
            break
        scores = score_rows(features, everyone, weights, biases, scale)  # one pass, all classes
        still = []
        for c in active:
            rows = np.searchsorted(everyone, examples[c].negatives)
            caches[c], added, dropped = update_cache(
                caches[c], examples[c].negatives, scores[rows, c], cfg.hard, cfg.easy
            )
            entry = next(e for e in reversed(log) if e["class"] == regions.classes[c])
            entry.update(hard_added=added, easy_dropped=dropped)
            if added:
                still.append(c)
        active = still
        if not active:
            break
    info = {"config": asdict(cfg), "rounds": max(e["round"] for e in log) + 1}
    return SVMModel(weights, biases, scale, list(regions.classes), info), log
