"""R-CNN's per-class linear SVMs: the model, the solver, and one class's trainer with its cache
of hard negatives (as Fast R-CNN's ``tools/train_svms.py`` has an ``SVMClassTrainer``).

The solver is scikit-learn's ``LinearSVC`` (liblinear, hinge loss, dual), the one the Python
port uses. Features are scaled so that their mean L2 norm is 20, and the scale is kept with
the model. :mod:`rcnn.heads.mining` drives the trainers through the pass over the negatives.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from rcnn.heads.config import SVMConfig
from rcnn.heads.linear import LinearHeads
from rcnn.heads.negatives import NegativeCache, NegativePool
from rcnn.heads.solver import Rows, solve_svms

logger = logging.getLogger(__name__)


class SVMModel(LinearHeads):
    """One linear SVM per class on scaled features: ``scores = scale * x @ weights.T + biases``
    (``weights [K, D]``, ``biases [K]``, float32)."""

    STEM, OFFSETS, MADE_BY = "svm", "biases", "rcnn train-svm"

    @property
    def biases(self) -> np.ndarray:
        return self.offsets

    @property
    def layer(self) -> str:
        """The features it scores (files of before the choice hold fc7's)."""
        return self.info.get("layer", "fc7")

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
    with ``c_i`` the positive weight for positives and 1 for negatives. ``x`` are the features
    ``[N, D]``, or already the scores ``f(x) [N]``; numpy arrays or torch tensors (summed in
    float64)."""
    if not isinstance(w, np.ndarray):  # a torch tensor, on any device
        w, x, y = (t.detach().double().cpu().numpy() for t in (w, x, y))
    w, x, y = (np.asarray(a, np.float64) for a in (w, x, y))
    scores = x if x.ndim == 1 else x @ w + b
    margins = np.maximum(0.0, 1.0 - y * scores)
    weight = np.where(y > 0, cfg.pos_weight, 1.0)
    return float(0.5 * (w @ w + (b / cfg.bias) ** 2) + cfg.C * (weight * margins).sum())


class ClassTrainer:
    """One class's SVM under hard-negative mining: its positives, its cache of hard negatives,
    its current weights, and the hard negatives added (and dropped over the memory budget)
    since it last trained.

    Args:
        name: the class.
        positives: float16 ``[P, D]`` features of its positives (unscaled).
        cfg: the SVM settings (``cfg.solver``: Newton's, or liblinear's for comparison).
        pool: where the cached negatives' features are, shared by the classes.
        device: where the Newton solver works.
    """

    def __init__(
        self, name: str, positives: np.ndarray, cfg: SVMConfig, pool: NegativePool, device="cpu"
    ):
        self.name, self.positives, self.cfg, self.device = name, positives, cfg, device
        dim = positives.shape[1]
        self.cache = NegativeCache(pool)
        self.weights, self.bias = np.zeros(dim, np.float32), 0.0
        self.solution = None  # the Newton solver's last one: the next training starts there
        self.pending = 0  # hard negatives added since the last training
        self.over_budget = 0  # cached ones dropped to hold the memory budget since then

    def add(self, rows: np.ndarray, x: np.ndarray, scores=None) -> int:
        """Caches the hard negatives ``rows`` (features ``x``, scored ``scores``) not cached
        yet; returns how many."""
        added = self.cache.add(rows, x, scores)
        self.pending += added
        return added

    @property
    def due(self) -> bool:
        """Whether enough hard negatives joined since the last training to train again."""
        return self.pending >= self.cfg.retrain_every

    def train(self, scale: float, pass_: int) -> dict:
        """Trains on the positives and the cache, then drops the cached negatives that score
        below ``cfg.easy``; returns the log row. Newton's solver starts from this class's last
        solution. :func:`train_classes` trains several classes at once."""
        return train_classes([self], scale, pass_)[0]

    def finish(self, weights, intercept: float, scores, labels, pass_: int) -> dict:
        """Takes the new SVM (``scores [P + n]`` of the positives, then of the cache, by it),
        drops the easy cached negatives and returns the log row."""
        count, cfg = len(self.positives), self.cfg
        objective = svm_objective(weights, intercept, scores, labels, cfg)
        self.weights, self.bias = weights.cpu().numpy().astype(np.float32), intercept
        dropped = self.cache.evict(scores[count:].cpu().numpy(), cfg.easy)
        row = {"class": self.name, "pass": pass_, "positives": count,
               "hard_added": self.pending, "easy_dropped": dropped,
               "budget_dropped": self.over_budget, "negatives_in_cache": len(self.cache),
               "objective": objective}  # fmt: skip
        self.pending = self.over_budget = 0
        return row


def train_classes(trainers: list[ClassTrainer], scale: float, pass_: int) -> list[dict]:
    """Trains the classes of ``trainers`` (see :meth:`ClassTrainer.train`) together: their
    examples are the rows of one matrix, each class's positives then the pool's negatives that
    any of them keeps, so Newton's solver reads the features once for all of them (as the
    pass's first and last trainings do); returns their log rows."""
    import torch

    cfg, device = trainers[0].cfg, trainers[0].device
    if cfg.solver == "liblinear":
        return [_train_liblinear(trainer, scale, pass_) for trainer in trainers]
    pool = trainers[0].cache.pool
    # The examples: each class's positives, then the pool's rows up to the last one any class
    # keeps, read where they are (float16; a row no class of these keeps weighs 0).
    end = max((int(t.cache.slots.max()) + 1 for t in trainers if len(t.cache.slots)), default=0)
    positives = np.concatenate([t.positives for t in trainers]).astype(np.float16, copy=False)
    parts = [torch.from_numpy(positives), torch.from_numpy(pool.features[:end])]
    x = Rows([part.to(device) for part in parts])
    firsts = np.cumsum([0] + [len(t.positives) for t in trainers])
    y = -torch.ones((len(x), len(trainers)), device=device)
    u = torch.zeros_like(y)
    rows = []
    for k, t in enumerate(trainers):
        mine = firsts[-1] + t.cache.slots
        rows.append(np.concatenate([np.arange(firsts[k], firsts[k + 1]), mine]))
        y[firsts[k] : firsts[k + 1], k] = 1
        u[firsts[k] : firsts[k + 1], k] = cfg.C * cfg.pos_weight
        u[torch.from_numpy(mine).to(device), k] = cfg.C
    start = None  # each class's last solution, where it has one
    if any(t.solution is not None for t in trainers):
        zero = torch.zeros(x.shape[1] + 1, device=device)
        start = torch.stack([zero if t.solution is None else t.solution for t in trainers], 1)
    solutions, _ = solve_svms(x, y, u, cfg.bias, scale, start)
    scores = scale * (x @ solutions[:-1]) + cfg.bias * solutions[-1]
    logs = []
    for k, t in enumerate(trainers):
        t.solution = solutions[:, k].clone()
        index = torch.from_numpy(rows[k]).to(device)
        intercept = float(solutions[-1, k]) * cfg.bias
        logs.append(t.finish(solutions[:-1, k], intercept, scores[index, k], y[index, k], pass_))
    return logs


def _train_liblinear(trainer: ClassTrainer, scale: float, pass_: int) -> dict:
    """A class's training by scikit-learn's LinearSVC (liblinear), the Python port's."""
    import torch

    features = np.concatenate([trainer.positives, trainer.cache.features]).astype(np.float32)
    labels = np.r_[np.ones(len(trainer.positives)), -np.ones(len(trainer.cache))]
    w, b = fit_svm(features * scale, labels, trainer.cfg)
    scores = torch.from_numpy((features @ w) * scale + b)
    return trainer.finish(torch.from_numpy(w), b, scores, torch.from_numpy(labels), pass_)
