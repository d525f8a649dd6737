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
from rcnn.heads.config import SVMConfig
from rcnn.heads.linear import LinearHeads

logger = logging.getLogger(__name__)


class SVMModel(LinearHeads):
    """One linear SVM per class on scaled features: ``scores = scale * x @ weights.T + biases``
    (``weights [K, D]``, ``biases [K]``, float32)."""

    STEM, OFFSETS, MADE_BY = "svm", "biases", "rcnn train-svm"

    @property
    def biases(self) -> np.ndarray:
        return self.offsets

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``[N, K]`` SVM scores of raw (unscaled) features ``[N, D]``; a class that had no
        positive to train on scores -inf (it is never detected)."""
        scores = (np.asarray(features, np.float32) * self.scale) @ self.weights.T + self.biases
        untrained = [k for k, c in enumerate(self.classes) if c in self.info.get("untrained", [])]
        scores[:, untrained] = -np.inf
        return scores


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


@dataclass
class NegativeCache:
    """One class's hard negatives: their region indices and their (unscaled) features, kept
    as float16, as a feature store keeps them."""

    rows: np.ndarray  # int64 [n]
    features: np.ndarray  # float16 [n, D]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return self.features.nbytes + self.rows.nbytes

    def add(self, rows: np.ndarray, features: np.ndarray) -> int:
        """Adds the regions not cached yet; returns how many."""
        new = ~np.isin(rows, self.rows)
        self.rows = np.concatenate([self.rows, rows[new]])
        self.features = np.concatenate([self.features, features[new].astype(np.float16)])
        return int(new.sum())

    def evict(self, scores: np.ndarray, easy: float) -> int:
        """Drops the cached negatives scoring below ``easy``; returns how many."""
        keep = scores >= easy
        self.rows, self.features = self.rows[keep], self.features[keep]
        return int(len(keep) - keep.sum())


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


def train_svms(regions, features, cfg: SVMConfig, report=None) -> tuple[SVMModel, list[dict]]:
    """Trains every class's SVM with hard-negative mining, in the paper's way: one pass over
    the negatives (``cfg.passes`` passes) in region order, every class scored at once block
    by block. The pass starts by caching each class's first ``cfg.first_negatives``
    negatives; then every class trains, and from there a negative scoring above ``cfg.hard``
    joins its class's cache, a class trains again whenever ``cfg.retrain_every`` joined and
    drops the cached ones that then score below ``cfg.easy``; every class trains once more at
    the end of a pass. The feature scale (mean L2 norm ``cfg.feature_norm``) is taken from the
    positives and those first negatives, so every region goes through the network once a
    pass, the positives aside.

    Only the positives and the caches are held (float16 features); ``features`` is a feature
    store or a :class:`rcnn.heads.stream.FeatureStream`, whose blocks arrive in the same
    order, so both give the same SVMs. ``report(row)`` is called at each training. Returns the
    model and the log (one row per class and training).
    """
    examples = _checked_examples(regions, cfg)
    num_classes = len(examples)
    trained = [c for c, ex in enumerate(examples) if len(ex.positives)]
    positives = _features_of(features, [ex.positives for ex in examples])
    empty = np.zeros((0, features.dim), np.float16)
    caches = [NegativeCache(np.zeros(0, np.int64), empty) for _ in examples]
    weights = np.zeros((num_classes, features.dim), np.float32)
    biases = np.zeros(num_classes, np.float32)
    log: list[dict] = []
    scale = None

    def train(c: int, pass_: int, added: int) -> None:
        x = np.concatenate([positives[c], caches[c].features]).astype(np.float32) * scale
        y = np.concatenate([np.ones(len(positives[c])), -np.ones(len(caches[c]))])
        weights[c], biases[c] = fit_svm(x, y, cfg)
        objective = svm_objective(weights[c], biases[c], x, y, cfg)
        neg_scores = x[len(positives[c]) :] @ weights[c] + biases[c]
        dropped = caches[c].evict(neg_scores, cfg.easy)
        row = {"class": regions.classes[c], "pass": pass_, "positives": len(positives[c]),
               "hard_added": added, "easy_dropped": dropped,
               "negatives_in_cache": len(caches[c]), "objective": objective,
               "cache_mb": round(sum(cache.nbytes for cache in caches) / 1e6, 1)}  # fmt: skip
        log.append(row)
        if report is not None:
            report(row)

    def start(rows_seen: list[np.ndarray]) -> float:
        """The scale, from the positives and the first negatives; then each first training."""
        sample = np.concatenate([*(positives[c] for c in trained), *rows_seen])
        mean = float(np.linalg.norm(sample.astype(np.float32), axis=1).mean())
        if not np.isfinite(mean) or mean <= 0:
            raise RcnnError("the features are all zero or not finite: is the model trained?")
        return cfg.feature_norm / mean

    truth = regions.require_truth("train-svm")
    everyone = np.unique(np.concatenate([ex.negatives for ex in examples]))
    first: list[np.ndarray] = []  # the features of the first negatives, for the scale
    for pass_ in range(1, cfg.passes + 1):
        pending = np.zeros(num_classes, np.int64)
        for rows, x in features.stream(everyone):
            negative = ~truth.is_gt[rows, None] & (truth.class_ious[rows] < cfg.neg_iou)
            if scale is None:  # the first negatives of each class go to its cache as they come
                for c in trained:
                    room = cfg.first_negatives - len(caches[c])
                    mine = np.flatnonzero(negative[:, c])[: max(room, 0)]
                    caches[c].add(rows[mine], x[mine])
                first.append(x.astype(np.float16))
                if any(len(caches[c]) < cfg.first_negatives for c in trained):
                    continue
                scale = start(first)
                first.clear()
                for c in trained:
                    train(c, 0, 0)
                # then this same block is mined with the first SVMs, as every later one
            scores = (x * scale) @ weights.T + biases  # [B, K]: every class at once
            for c in trained:
                hard = negative[:, c] & (scores[:, c] > cfg.hard)
                if hard.any():
                    pending[c] += caches[c].add(rows[hard], x[hard])
                if pending[c] >= cfg.retrain_every:
                    train(c, pass_, int(pending[c]))
                    pending[c] = 0
        if scale is None:  # fewer negatives in all than a first training takes
            scale = start(first)
        for c in trained:
            train(c, pass_, int(pending[c]))
    untrained = [regions.classes[c] for c in range(num_classes) if c not in trained]
    info = {"config": asdict(cfg), "passes": cfg.passes, "untrained": untrained}
    return SVMModel(weights, biases, scale, list(regions.classes), info), log


def _features_of(features, groups: list[np.ndarray]) -> list[np.ndarray]:
    """float16 features of each group of regions, each region computed (or read) once."""
    union = np.unique(np.concatenate(groups)) if groups else np.zeros(0, np.int64)
    rows = features.rows(union).astype(np.float16)
    return [rows[np.searchsorted(union, group)] for group in groups]


def _checked_examples(regions, cfg: SVMConfig) -> list[ClassExamples]:
    if not regions.info.get("labels", {}).get("add_gt"):
        raise RcnnError(
            f"the regions of split '{regions.info.get('split', '?')}' were prepared without "
            "their ground-truth boxes, which the SVMs take as positives (and without the "
            "proposals that touch no object, which they need as negatives): prepare them with "
            "`rcnn prepare --preset paper`"
        )
    examples = [class_examples(regions, k, cfg.neg_iou) for k in range(1, len(regions.classes) + 1)]
    split = regions.info.get("split", "?")
    missing = [regions.classes[k] for k, ex in enumerate(examples) if len(ex.positives) == 0]
    if len(missing) == len(examples):
        raise RcnnError(f"no class has a (non-difficult) ground-truth box in split '{split}'")
    for name in missing:  # no positive to learn from: the class is never detected
        logger.warning("class %r has no (non-difficult) ground-truth box in split '%s': it gets "
                       "no SVM and is never detected with --scorer svm", name, split)  # fmt: skip
    for k, ex in enumerate(examples, start=1):
        if len(ex.negatives) == 0:
            raise RcnnError(f"class {regions.classes[k - 1]!r} has no negative region")
    return examples
