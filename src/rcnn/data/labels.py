"""Labelling proposals as class regions or background by their overlap with ground truth.

Labels: ``BACKGROUND = 0``; classes are ``1..K`` in the order of ``--classes``. A positive takes
the class of the ground-truth box it overlaps most.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from rcnn.errors import ConfigError, check_numbers
from rcnn.ops.boxes import box_area, box_iou, unique_boxes

BACKGROUND = 0


@dataclass(frozen=True)
class LabelConfig:
    """Thresholds that turn proposals into training regions.

    A region is positive when its best IoU with a ground-truth box is ``>= pos_iou``; negative
    when ``neg_iou_min < IoU < neg_iou_max`` and its area is larger than ``neg_min_area_frac``
    times the image's largest ground-truth box; anything else is left out. With
    ``background_images`` the images without a chosen object are kept, every region of theirs
    a negative (with ``neg_iou_min < 0``: they touch no box).
    """

    pos_iou: float = 0.5
    neg_iou_min: float = 0.0  # strict lower bound; -1 keeps regions that do not touch any box
    neg_iou_max: float = 0.5
    neg_min_area_frac: float = 0.2
    add_gt: bool = False  # the ground-truth boxes themselves become positives
    keep_difficult: bool = False  # difficult objects count as ground truth
    # Every image of the split, those without a chosen object too (all their regions are
    # negatives); else only the images that show a chosen class.
    background_images: bool = False

    def __post_init__(self):
        check_numbers(self, {"neg_min_area_frac": "--neg-min-area"})
        if not 0.0 < self.pos_iou <= 1.0:
            raise ConfigError(f"--pos-iou must be in (0, 1], got {self.pos_iou}")
        if not -1.0 <= self.neg_iou_min < self.neg_iou_max:
            raise ConfigError(
                f"--neg-iou-min ({self.neg_iou_min}) must be >= -1 and below "
                f"--neg-iou-max ({self.neg_iou_max})"
            )
        if self.neg_iou_max > self.pos_iou:
            raise ConfigError(
                f"--neg-iou-max ({self.neg_iou_max}) must not exceed --pos-iou ({self.pos_iou})"
            )
        if self.neg_min_area_frac < 0:
            raise ConfigError(f"--neg-min-area must be >= 0, got {self.neg_min_area_frac}")

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # The recipe this project starts from: difficult objects left out, no ground-truth
    # positives, and only negatives that touch an object and are not tiny.
    "seed": LabelConfig(),
    # Girshick et al. (2014): ground truth added as positives, everything below 0.5 is
    # background, difficult objects kept, and every image of the split: the SVMs mine their
    # hard negatives from all trainval images, whatever they show.
    "paper": LabelConfig(
        neg_iou_min=-1.0,
        neg_min_area_frac=0.0,
        add_gt=True,
        keep_difficult=True,
        background_images=True,
    ),  # fmt: skip
}


def label_config(preset: str, **overrides) -> LabelConfig:
    """A preset with the flags the user set (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


def label_regions(
    proposals: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray, config: LabelConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels one image's proposals.

    Args:
        proposals (ndarray[N, 4]): candidate boxes.
        gt_boxes (ndarray[G, 4]): ground-truth boxes (G may be 0).
        gt_labels (ndarray[G]): their labels in ``1..K``.
        config: thresholds.

    Returns:
        boxes (int32 [R, 4]), labels (int16 [R]) and best IoU (float32 [R]) of the kept regions,
        in the deterministic order of :func:`rcnn.ops.boxes.unique_boxes`.
    """
    gt_boxes = np.asarray(gt_boxes, dtype=np.int32).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, dtype=np.int16).reshape(-1)
    boxes = np.asarray(proposals, dtype=np.int32).reshape(-1, 4)
    if config.add_gt and len(gt_boxes):
        boxes = unique_boxes(np.concatenate([gt_boxes, boxes]))
    if len(gt_boxes):
        iou = box_iou(boxes, gt_boxes)  # [N, G]
        best = iou.argmax(axis=1)
        max_iou = iou[np.arange(len(boxes)), best]
        largest = box_area(gt_boxes).max()
    else:
        best = np.zeros(len(boxes), dtype=np.int64)
        max_iou = np.zeros(len(boxes))
        largest = 0.0
    positive = max_iou >= config.pos_iou
    negative = (
        (max_iou > config.neg_iou_min)
        & (max_iou < config.neg_iou_max)
        & (box_area(boxes) > config.neg_min_area_frac * largest)
        & ~positive
    )
    labels = np.where(positive, gt_labels[best] if len(gt_boxes) else BACKGROUND, BACKGROUND)
    keep = positive | negative
    return boxes[keep], labels[keep].astype(np.int16), max_iou[keep].astype(np.float32)


def region_details(
    boxes: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the SVM and box-regression stages need to know of one image's labelled regions.

    Args:
        boxes (ndarray[R, 4]): the kept regions.
        gt_boxes (ndarray[G, 4]), gt_labels (ndarray[G]): the image's ground truth.
        num_classes: K.

    Returns:
        gt_index (int32 [R]): the ground-truth box each region overlaps most, -1 if none;
        class_ious (float32 [R, K]): the best IoU with a box of each class;
        is_gt (bool [R]): the region is a ground-truth box itself.
    """
    boxes = np.asarray(boxes, dtype=np.int32).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, dtype=np.int32).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels).reshape(-1)
    class_ious = np.zeros((len(boxes), num_classes), np.float32)
    if len(gt_boxes) == 0:
        return np.full(len(boxes), -1, np.int32), class_ious, np.zeros(len(boxes), bool)
    iou = box_iou(boxes, gt_boxes)  # [R, G]
    gt_index = np.where(iou.max(axis=1) > 0, iou.argmax(axis=1), -1).astype(np.int32)
    for k in range(1, num_classes + 1):
        mine = gt_labels == k
        if mine.any():
            class_ious[:, k - 1] = iou[:, mine].max(axis=1)
    is_gt = (boxes[:, None, :] == gt_boxes[None, :, :]).all(axis=2).any(axis=1)
    return gt_index, class_ious, is_gt
