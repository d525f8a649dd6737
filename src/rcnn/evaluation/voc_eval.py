"""PASCAL VOC detection evaluation, by the devkit's rules.

For one class, detections of every image are taken in order of decreasing score. A detection
is a true positive when the ground-truth box of that class it overlaps most in its image has
IoU > 0.5 and no higher-scored detection matched that box before; a second detection of a box
already matched is a false positive (a duplicate). The devkit is peculiar in two ways, kept
here: the best-overlapping box is searched among all boxes of the class, matched or not,
difficult or not (a detection whose best box is already matched does not fall back to the
next best); and a detection whose best box is *difficult* is ignored, neither true nor false
positive, while difficult boxes do not count in the number of positives.

IoU uses the project's exclusive box convention, which gives the devkit's numbers exactly:
the devkit's ``xmax - xmin + 1`` on 1-based inclusive pixels is ``x2 - x1`` here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rcnn.ops.boxes import box_iou

IOU_THRESHOLD = 0.5  # strictly greater counts, as in the devkit


@dataclass
class GroundTruth:
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


def match_detections(
    image_ids: list[str],
    scores: np.ndarray,
    boxes: np.ndarray,
    ground_truth: dict[str, GroundTruth],
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
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    matched = {image: np.zeros(len(gt.boxes), bool) for image, gt in ground_truth.items()}
    for rank, d in enumerate(order):
        gt = ground_truth.get(image_ids[d])
        if gt is None or len(gt.boxes) == 0:
            fp[rank] = 1
            continue
        overlaps = box_iou(boxes[d : d + 1], gt.boxes)[0]
        best = int(overlaps.argmax())
        if overlaps[best] <= iou_threshold:
            fp[rank] = 1
        elif gt.difficult[best]:
            continue  # neither a hit nor a miss
        elif not matched[image_ids[d]][best]:
            tp[rank], matched[image_ids[d]][best] = 1, True
        else:
            fp[rank] = 1  # a duplicate
    return tp, fp


def evaluate_class(
    image_ids: list[str],
    scores: np.ndarray,
    boxes: np.ndarray,
    ground_truth: dict[str, GroundTruth],
    iou_threshold: float = IOU_THRESHOLD,
) -> dict:
    """AP (11-point and area), the precision-recall curve and the final recall of one class
    (``iou_threshold`` above 0.5 asks for tighter boxes than the benchmark)."""
    positives = int(sum(np.count_nonzero(~gt.difficult) for gt in ground_truth.values()))
    tp, fp = match_detections(image_ids, scores, boxes, ground_truth, iou_threshold)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if positives == 0:  # the devkit's 0 / 0: undefined, left out of the mean
        nan = float("nan")
        return {"ap_07": nan, "ap": nan, "recall": nan, "positives": 0,
                "detections": len(scores), "curve": (tp * nan, precision)}  # fmt: skip
    recall = tp / positives
    return {
        "ap_07": voc_ap(recall, precision, use_07_metric=True),
        "ap": voc_ap(recall, precision, use_07_metric=False),
        "recall": float(recall[-1]) if len(recall) else 0.0,
        "positives": positives,
        "detections": len(scores),
        "curve": (recall, precision),
    }
