"""R-CNN's per-class bounding-box regression on pool5 features.

For class k, every region labelled k whose IoU with its ground-truth box is at least 0.6 is
an example: its pool5 features (scaled to a mean L2 norm of 20, as for the SVMs) are regressed
on the targets ``tx, ty, tw, th`` that move the region onto that box
(:func:`rcnn.ops.boxes.encode_boxes`), by ridge regression with lambda = 1000 (scikit-learn's
``Ridge``; the intercept is not regularized). At test time each scored box is moved by its
class's regressor before non-maximum suppression and clipped to the image.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np

from rcnn.errors import RcnnError
from rcnn.heads.config import BBoxConfig
from rcnn.heads.linear import LinearHeads
from rcnn.ops.boxes import clip_boxes, decode_boxes, encode_boxes

logger = logging.getLogger(__name__)


class BBoxRegressor(LinearHeads):
    """Per class: ``deltas = scale * x @ weights[k] + intercepts[k]`` (``weights [K, D, 4]``,
    ``intercepts [K, 4]``, float32)."""

    STEM, OFFSETS, MADE_BY = "bbox", "intercepts", "rcnn train-bbox"

    @property
    def intercepts(self) -> np.ndarray:
        return self.offsets

    def deltas(self, features: np.ndarray) -> np.ndarray:
        """``[N, K, 4]`` regression outputs of raw pool5 features ``[N, D]``."""
        x = np.asarray(features, np.float32) * self.scale
        return np.einsum("nd,kdt->nkt", x, self.weights) + self.intercepts

    def apply(self, boxes: np.ndarray, features: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Each box moved by every class's regressor: float32 ``[N, K, 4]``, clipped to the
        ``(width, height)`` image."""
        deltas = self.deltas(features)
        moved = decode_boxes(boxes, deltas.reshape(len(boxes), -1)).reshape(deltas.shape)
        width, height = size
        return (
            clip_boxes(moved.reshape(-1, 4), width, height).reshape(moved.shape).astype(np.float32)
        )


def fit_ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """``(W [D, T], b [T])`` minimizing ``|x W + b - y|^2 + ridge |W|^2``."""
    from sklearn.linear_model import Ridge

    model = Ridge(alpha=ridge, fit_intercept=True)
    model.fit(x, y)
    return model.coef_.T.astype(np.float32), model.intercept_.astype(np.float32)


def regression_examples(regions, k: int, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Region indices of class ``k``'s examples and their targets ``[M, 4]``."""
    truth = regions.require_truth("train-bbox")
    rows = np.flatnonzero(
        (regions.labels == k) & (truth.gt_index >= 0) & (truth.class_ious[:, k - 1] >= min_iou)
    )
    gt = truth.boxes[truth.gt_index[rows]]
    return rows, encode_boxes(regions.boxes[rows], gt)


def train_bbox(regions, features, cfg: BBoxConfig) -> tuple[BBoxRegressor, list[dict]]:
    """Fits every class's regressor on its own regions only (IoU >= ``cfg.min_iou`` with a
    box of the class), one class at a time; returns it and one log row per class. The
    feature scale comes from a sample of those regions, whose features are kept for the fits:
    every region goes through the network (or is read) once."""
    num_classes = len(regions.classes)
    examples = [regression_examples(regions, k, cfg.min_iou) for k in range(1, num_classes + 1)]
    everyone = np.concatenate([rows for rows, _ in examples])
    rng = np.random.default_rng(cfg.seed)
    sample = np.sort(rng.choice(everyone, min(len(everyone), SCALE_SAMPLE), replace=False))
    known = features.rows(sample) if len(sample) else np.zeros((0, features.dim), np.float32)
    mean = float(np.linalg.norm(known, axis=1).mean()) if len(known) else 0.0
    if not np.isfinite(mean) or mean <= 0:
        raise RcnnError(
            "no region overlaps its box enough to regress, or the features are all zero"
        )
    scale = cfg.feature_norm / mean
    weights = np.zeros((num_classes, features.dim, 4), np.float32)
    intercepts = np.zeros((num_classes, 4), np.float32)
    log, untrained = [], []
    for k, (rows, targets) in enumerate(examples, start=1):
        name = regions.classes[k - 1]
        if len(rows) == 0:  # zero weights: its boxes stay where they are
            split = regions.info.get("split", "?")
            logger.warning("class %r has no region with IoU >= %s in split '%s': its boxes are "
                           "left unmoved", name, cfg.min_iou, split)  # fmt: skip
            untrained.append(name)
            log.append({"class": name, "examples": 0, "target_rms": float("nan"),
                        "residual_rms": float("nan")})  # fmt: skip
            continue
        x = _rows(features, rows, sample, known) * scale
        weights[k - 1], intercepts[k - 1] = fit_ridge(x, targets, cfg.ridge)
        residual = x @ weights[k - 1] + intercepts[k - 1] - targets
        log.append(
            {
                "class": name,
                "examples": len(rows),
                "target_rms": float(np.sqrt((targets**2).mean())),
                "residual_rms": float(np.sqrt((residual**2).mean())),
            }
        )
    info = {"config": asdict(cfg), "untrained": untrained}
    return BBoxRegressor(weights, intercepts, scale, list(regions.classes), info), log


SCALE_SAMPLE = 10_000  # regions whose features set the scale (kept for the fits)


def _rows(features, rows: np.ndarray, sample: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Features of ``rows``: those in the (sorted) ``sample`` from ``known``, the rest read
    or computed now."""
    at = np.minimum(np.searchsorted(sample, rows), max(len(sample) - 1, 0))
    have = (sample[at] == rows) if len(sample) else np.zeros(len(rows), bool)
    out = np.empty((len(rows), features.dim), np.float32)
    out[have] = known[at[have]]
    if not have.all():
        out[~have] = features.rows(rows[~have])
    return out
