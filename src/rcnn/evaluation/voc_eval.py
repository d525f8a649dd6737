"""PASCAL VOC detection evaluation, by the devkit's rules.

For one class, detections of every image are taken in order of decreasing score. A detection
is a true positive when the ground-truth box of that class it overlaps most in its image has
IoU >= 0.5 and no higher-scored detection matched that box before; a second detection of a box
already matched is a false positive (a duplicate). The devkit is peculiar in two ways, kept
here: the best-overlapping box is searched among all boxes of the class, matched or not,
difficult or not (a detection whose best box is already matched does not fall back to the
next best); and a detection whose best box is *difficult* is ignored, neither true nor false
positive, while difficult boxes do not count in the number of positives.

IoU uses the project's exclusive box convention, which gives the devkit's numbers exactly:
the devkit's ``xmax - xmin + 1`` on 1-based inclusive pixels is ``x2 - x1`` here, and the
overlap is the same ``inter / (area1 + area2 - inter)``, so an IoU of exactly 0.5 (integer
boxes often give one) is exactly 0.5 in both. The devkit's ``VOCevaldet.m`` matches at
``ovmax >= minoverlap``, and so does this module; py-faster-rcnn's and detectron2's Python
ports test ``ovmax > ovthresh`` and differ from the devkit on such boxes. The devkit only
measures boxes that intersect the detection, so a detection overlapping no box is a false
positive whatever the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rcnn.ops.boxes import paired_iou

IOU_THRESHOLD = 0.5  # an IoU of exactly 0.5 counts, as in the devkit (VOCevaldet.m)


@dataclass
class ImageTruth:
    """One image's boxes of one class: ``boxes [G, 4]`` and ``difficult [G]``."""

    boxes: np.ndarray
    difficult: np.ndarray


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """Average precision from a precision-recall curve.

    Args:
        recall, precision: the curve, in order of decreasing score.
        use_07_metric: VOC2007's 11-point interpolation (what the R-CNN paper reports):
            the mean over t = 0, 0.1, ..., 1 of the best precision at recall >= t. Otherwise
            VOC2010's area under the curve, with precision made monotonically decreasing.
    """
    recall, precision = np.asarray(recall, float), np.asarray(precision, float)
    if use_07_metric:
        points = []
        for t in np.linspace(0, 1, 11):
            reached = precision[recall >= t]
            points.append(reached.max() if reached.size else 0.0)
        return float(np.mean(points))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the envelope: best precision to the right
    changes = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


@dataclass
class ClassTruth:
    """Every ground-truth box of one class in a set of images, flat and grouped by image.

    Attributes:
        boxes (float64 [G, 4]), image (int64 [G], non-decreasing), difficult (bool [G]).
        num_images: images are ``0 .. num_images - 1``.
    """

    boxes: np.ndarray
    image: np.ndarray
    difficult: np.ndarray
    num_images: int

    @classmethod
    def of(cls, ids: list[str], per_image: dict[str, ImageTruth]) -> ClassTruth:
        """The boxes of ``per_image`` (images not in it have none), image ``i`` being
        ``ids[i]``; each image's boxes keep their order."""
        parts = [per_image[i] for i in ids if i in per_image]
        counts = [len(per_image[i].boxes) if i in per_image else 0 for i in ids]
        boxes = [np.asarray(p.boxes, float).reshape(-1, 4) for p in parts]
        difficult = [np.asarray(p.difficult, bool).reshape(-1) for p in parts]
        return cls(
            np.concatenate(boxes) if boxes else np.zeros((0, 4)),
            np.repeat(np.arange(len(ids)), counts),
            np.concatenate(difficult) if difficult else np.zeros(0, bool),
            len(ids),
        )

    @property
    def positives(self) -> int:
        return int(np.count_nonzero(~self.difficult))


def indexed(image_ids: list[str], ground_truth: dict[str, ImageTruth]):
    """Detections' image ids as indices into the images of a :class:`ClassTruth` made of
    ``ground_truth`` (images with detections but no boxes included)."""
    ids = list(dict.fromkeys([*ground_truth, *image_ids]))
    index = {image: i for i, image in enumerate(ids)}
    images = np.array([index[i] for i in image_ids], np.int64)
    return images, ClassTruth.of(ids, ground_truth)


def match_detections(
    image_ids: list[str],
    scores: np.ndarray,
    boxes: np.ndarray,
    ground_truth: dict[str, ImageTruth],
    iou_threshold: float = IOU_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """True and false positive flags of one class's detections, in order of decreasing score.

    Args:
        image_ids: the image of each detection ``[D]``.
        scores: ``[D]``.
        boxes: ``[D, 4]`` in the project convention.
        ground_truth: the class's boxes per image id (images without any may be absent).

    Returns:
        ``tp [D]`` and ``fp [D]`` (float 0/1; both 0 for an ignored detection), sorted by score.
    """
    images, truth = indexed(image_ids, ground_truth)
    return match_flat(images, scores, boxes, truth, iou_threshold)


def match_flat(
    images: np.ndarray,
    scores: np.ndarray,
    boxes: np.ndarray,
    truth: ClassTruth,
    iou_threshold: float = IOU_THRESHOLD,
    block: int = 1 << 22,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`match_detections` on image indices, without a loop over detections.

    The devkit's greedy loop decides each detection by the box of its image it overlaps most
    (whether matched or not), so every detection's best box is found at once; then, in order
    of score, the first detection above the threshold on a box is its true positive and every
    later one a duplicate. ``block`` bounds the ``[B, G_max]`` overlaps held at once.
    """
    scores = np.asarray(scores, float).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    images = np.asarray(images, np.int64).reshape(-1)[order]
    boxes = np.asarray(boxes, float).reshape(-1, 4)[order]
    counts = np.bincount(truth.image, minlength=truth.num_images)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    widest = int(counts.max()) if len(counts) else 0
    best = np.zeros(len(order), np.int64)  # row of truth.boxes
    best_iou = np.full(len(order), -1.0)  # -1: the image has no box of the class
    step = max(1, block // max(widest, 1))
    columns = np.arange(widest)
    for start in range(0, len(order) if widest else 0, step):
        part = slice(start, start + step)
        valid = columns < counts[images[part]][:, None]  # [B, W]
        rows = np.where(valid, starts[images[part]][:, None] + columns, 0)
        overlaps = np.where(valid, paired_iou(boxes[part], truth.boxes[rows]), -1.0)
        pick = overlaps.argmax(axis=1)  # the first of equal overlaps, as the devkit's max
        best[part] = rows[np.arange(len(pick)), pick]
        best_iou[part] = overlaps[np.arange(len(pick)), pick]
    above = (best_iou >= iou_threshold) & (best_iou > 0)  # the devkit's ovmax >= minoverlap
    ignored = above & truth.difficult[best] if len(truth.boxes) else np.zeros(len(order), bool)
    hits = np.flatnonzero(above & ~ignored)
    first = np.zeros(len(order), bool)
    first[hits[np.unique(best[hits], return_index=True)[1]]] = True
    tp = first.astype(float)
    fp = (~above | (above & ~ignored & ~first)).astype(float)
    return tp, fp


def evaluate_class(
    image_ids: list[str],
    scores: np.ndarray,
    boxes: np.ndarray,
    ground_truth: dict[str, ImageTruth],
    iou_threshold: float = IOU_THRESHOLD,
) -> dict:
    """AP (11-point and area), the precision-recall curve and the final recall of one class
    (``iou_threshold`` above 0.5 asks for tighter boxes than the benchmark)."""
    images, truth = indexed(image_ids, ground_truth)
    return evaluate_flat(images, scores, boxes, truth, iou_threshold)


def evaluate_flat(
    images: np.ndarray,
    scores: np.ndarray,
    boxes: np.ndarray,
    truth: ClassTruth,
    iou_threshold: float = IOU_THRESHOLD,
) -> dict:
    """:func:`evaluate_class` on image indices into ``truth``'s images."""
    positives = truth.positives
    tp, fp = match_flat(images, scores, boxes, truth, iou_threshold)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if positives == 0:  # the devkit's 0 / 0: undefined, left out of the mean
        nan = float("nan")
        return {"ap_07": nan, "ap": nan, "recall": nan, "positives": 0,
                "detections": len(tp), "curve": (tp * nan, precision)}  # fmt: skip
    recall = tp / positives
    return {
        "ap_07": voc_ap(recall, precision, use_07_metric=True),
        "ap": voc_ap(recall, precision, use_07_metric=False),
        "recall": float(recall[-1]) if len(recall) else 0.0,
        "positives": positives,
        "detections": len(tp),
        "curve": (recall, precision),
    }
