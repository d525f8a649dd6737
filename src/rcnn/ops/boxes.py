"""Box helpers on NumPy arrays.

The project's one box convention: ``x1, y1, x2, y2`` in 0-based pixels with ``x2`` and ``y2``
exclusive, so a box is the array slice ``image[y1:y2, x1:x2]`` and its width is ``x2 - x1``.
This is also what ``torchvision.ops.box_iou`` assumes, so the two agree exactly.
VOC's 1-based inclusive coordinates are converted in :mod:`rcnn.data.annotations` and nowhere else.
"""

from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Area of each box.

    Args:
        boxes (ndarray[N, 4]): boxes in ``x1, y1, x2, y2`` format.

    Returns:
        ndarray[N] (float64): ``(x2 - x1) * (y2 - y1)``, 0 for empty boxes.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    widths = np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
    heights = np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return widths * heights


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair of boxes.

    Args:
        boxes1 (ndarray[N, 4]): boxes in ``x1, y1, x2, y2`` format.
        boxes2 (ndarray[M, 4]): boxes in ``x1, y1, x2, y2`` format.

    Returns:
        ndarray[N, M] (float64): IoU of ``boxes1[i]`` with ``boxes2[j]``; 0 for an empty union.
    """
    boxes1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    boxes2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    top_left = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    bottom_right = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = np.clip(bottom_right - top_left, 0, None)  # [N, M, 2]
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def paired_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of each box with its own row of candidates, by :func:`box_iou`'s arithmetic.

    Args:
        boxes1 (ndarray[N, 4]): boxes in ``x1, y1, x2, y2`` format.
        boxes2 (ndarray[N, M, 4]): ``M`` candidates for each of them.

    Returns:
        ndarray[N, M] (float64): IoU of ``boxes1[i]`` with ``boxes2[i, j]``.
    """
    boxes1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 1, 4)
    boxes2 = np.asarray(boxes2, dtype=np.float64).reshape(len(boxes1), -1, 4)
    area1 = box_area(boxes1).reshape(-1, 1)
    area2 = box_area(boxes2).reshape(len(boxes1), -1)
    top_left = np.maximum(boxes1[..., :2], boxes2[..., :2])  # [N, M, 2]
    bottom_right = np.minimum(boxes1[..., 2:], boxes2[..., 2:])  # [N, M, 2]
    wh = np.clip(bottom_right - top_left, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip boxes to an image of ``width`` x ``height`` pixels (same dtype as the input)."""
    boxes = np.array(boxes, copy=True).reshape(-1, 4)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    return boxes


def nonempty(boxes: np.ndarray, min_size: int = 1) -> np.ndarray:
    """Boolean mask of boxes at least ``min_size`` pixels wide and high."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    return ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)


def unique_boxes(boxes: np.ndarray) -> np.ndarray:
    """Distinct boxes in lexicographic ``(x1, y1, x2, y2)`` order, as int32 ``[K, 4]``.

    The order depends only on the set of boxes, not on the order they came in, which makes
    Selective Search output (same set, shuffled order between runs) reproducible.
    """
    boxes = np.asarray(boxes, dtype=np.int32).reshape(-1, 4)
    if len(boxes) == 0:
        return boxes
    return np.unique(boxes, axis=0)


def encode_boxes(proposals: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """R-CNN's box-regression targets of ``targets`` relative to ``proposals``.

    ``tx = (Gx - Px) / Pw``, ``ty = (Gy - Py) / Ph``, ``tw = log(Gw / Pw)``, ``th = log(Gh / Ph)``
    with centres ``x`` and sizes ``w = x2 - x1`` in the project convention (torchvision's
    ``BoxCoder`` with weights ``(1, 1, 1, 1)`` gives the same numbers).

    Args:
        proposals (ndarray[N, 4]), targets (ndarray[N, 4]): boxes with positive sizes.

    Returns:
        ndarray[N, 4] (float64): ``tx, ty, tw, th``.
    """
    p = np.asarray(proposals, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(targets, dtype=np.float64).reshape(-1, 4)
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    px, py = p[:, 0] + 0.5 * pw, p[:, 1] + 0.5 * ph
    gx, gy = g[:, 0] + 0.5 * gw, g[:, 1] + 0.5 * gh
    return np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], axis=1)


def decode_boxes(proposals: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode_boxes`: boxes from proposals ``[N, 4]`` and ``tx, ty, tw,
    th``; ``deltas [N, 4 * M]`` (one set per class) give boxes ``[N, 4 * M]`` (float64)."""
    p = np.asarray(proposals, dtype=np.float64).reshape(-1, 4)
    d = np.asarray(deltas, dtype=np.float64).reshape(len(p), -1, 4)  # [N, M, 4]
    pw, ph = (p[:, 2] - p[:, 0])[:, None], (p[:, 3] - p[:, 1])[:, None]
    px, py = p[:, 0][:, None] + 0.5 * pw, p[:, 1][:, None] + 0.5 * ph
    x, y = px + d[..., 0] * pw, py + d[..., 1] * ph
    w, h = pw * np.exp(d[..., 2]), ph * np.exp(d[..., 3])
    boxes = np.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], axis=-1)
    return boxes.reshape(len(p), -1)  # [N, 4 * M], as deltas
