"""R-CNN's per-class linear SVMs: the model, the solver, and one class's trainer with its cache
of hard negatives (as Fast R-CNN's ``tools/train_svms.py`` has an ``SVMClassTrainer``).

The solver is scikit-learn's ``LinearSVC`` (liblinear, hinge loss, dual), the one the Python
port uses. Features are scaled so that their mean L2 norm is 20, and the scale is kept with
the model. :mod:`rcnn.heads.mining` drives the trainers through the pass over the negatives.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

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


class ClassTrainer:
    """One class's SVM under hard-negative mining: its positives, its cache of hard negatives,
    its current weights, and the hard negatives added since it last trained.

    Args:
        name: the class.
        positives: float16 ``[P, D]`` features of its positives (unscaled).
        cfg: the SVM settings.
    """

    def __init__(self, name: str, positives: np.ndarray, cfg: SVMConfig):
        self.name, self.positives, self.cfg = name, positives, cfg
        dim = positives.shape[1]
        self.cache = NegativeCache(np.zeros(0, np.int64), np.zeros((0, dim), np.float16))
        self.weights, self.bias = np.zeros(dim, np.float32), 0.0
        self.pending = 0  # hard negatives added since the last training

    def add(self, rows: np.ndarray, x: np.ndarray) -> int:
        """Caches the hard negatives ``rows`` (features ``x``) not cached yet; returns how
        many."""
        added = self.cache.add(rows, x)
        self.pending += added
        return added

    @property
    def due(self) -> bool:
        """Whether enough hard negatives joined since the last training to train again."""
        return self.pending >= self.cfg.retrain_every

    def train(self, scale: float, pass_: int) -> dict:
        """Trains on the positives and the cache, then drops the cached negatives that score
        below ``cfg.easy``; returns the log row."""
        positives, cache, cfg = self.positives, self.cache, self.cfg
        x = np.concatenate([positives, cache.features]).astype(np.float32) * scale
        y = np.concatenate([np.ones(len(positives)), -np.ones(len(cache))])
        self.weights, self.bias = fit_svm(x, y, cfg)
        objective = svm_objective(self.weights, self.bias, x, y, cfg)
        dropped = cache.evict(x[len(positives) :] @ self.weights + self.bias, cfg.easy)
        row = {"class": self.name, "pass": pass_, "positives": len(positives),
               "hard_added": self.pending, "easy_dropped": dropped,
               "negatives_in_cache": len(cache), "objective": objective}  # fmt: skip
        self.pending = 0
        return row
