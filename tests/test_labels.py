import numpy as np
import pytest

from rcnn.data.labels import (
    BACKGROUND,
    PRESETS,
    LabelConfig,
    label_config,
    label_regions,
    region_details,
)

GT = np.array([[0, 0, 10, 10]])


def as_dict(boxes, labels, ious):
    return {
        tuple(b): (int(lab), round(float(i), 4))
        for b, lab, i in zip(boxes, labels, ious, strict=True)
    }


def test_seed_preset_hand_built():
    proposals = np.array(
        [
            [0, 0, 10, 10],  # IoU 1      -> positive
            [0, 0, 10, 6],  # IoU 0.6    -> positive
            [0, 0, 10, 5],  # IoU 0.5    -> positive (>= 0.5)
            [0, 0, 10, 4],  # IoU 0.4    -> negative
            [8, 8, 18, 18],  # IoU 4/196  -> negative (area 100 > 20)
            [9, 9, 13, 13],  # IoU 1/115, area 16 <= 1/5 * 100 -> dropped
            [20, 20, 40, 40],  # IoU 0      -> dropped in seed
        ]
    )
    got = as_dict(*label_regions(proposals, GT, [1], PRESETS["seed"]))
    assert got == {
        (0, 0, 10, 4): (BACKGROUND, 0.4),
        (0, 0, 10, 5): (1, 0.5),
        (0, 0, 10, 6): (1, 0.6),
        (0, 0, 10, 10): (1, 1.0),
        (8, 8, 18, 18): (BACKGROUND, round(4 / 196, 4)),
    }


def test_paper_preset_adds_gt_and_keeps_zero_iou():
    proposals = np.array([[0, 0, 10, 4], [9, 9, 13, 13], [20, 20, 40, 40], [0, 0, 10, 6]])
    gt = np.array([[0, 0, 10, 10], [30, 0, 50, 10]])
    got = as_dict(*label_regions(proposals, gt, [1, 1], PRESETS["paper"]))
    assert got == {
        (0, 0, 10, 4): (BACKGROUND, 0.4),
        (0, 0, 10, 6): (1, 0.6),
        (0, 0, 10, 10): (1, 1.0),
        (9, 9, 13, 13): (BACKGROUND, round(1 / 115, 4)),
        (20, 20, 40, 40): (BACKGROUND, 0.0),
        (30, 0, 50, 10): (1, 1.0),
    }


def test_multiclass_positive_takes_best_overlap_class():
    gt = np.array([[0, 0, 10, 10], [5, 0, 15, 10]])
    proposals = np.array([[1, 0, 11, 10], [5, 0, 14, 10]])
    boxes, labels, ious = label_regions(proposals, gt, [1, 2], PRESETS["seed"])
    assert dict(zip(map(tuple, boxes), labels.tolist(), strict=True)) == {
        (1, 0, 11, 10): 1,
        (5, 0, 14, 10): 2,
    }
    np.testing.assert_allclose(ious, [9 / 11, 0.9], rtol=1e-6)


def test_no_ground_truth():
    proposals = np.array([[0, 0, 10, 10], [5, 5, 20, 20]])
    assert len(label_regions(proposals, np.zeros((0, 4)), [], PRESETS["seed"])[0]) == 0
    _, labels, ious = label_regions(proposals, np.zeros((0, 4)), [], PRESETS["paper"])
    assert labels.tolist() == [0, 0] and ious.tolist() == [0, 0]


def test_output_types():
    boxes, labels, ious = label_regions(np.array([[0, 0, 10, 10]]), GT, [1], LabelConfig())
    assert (boxes.dtype, labels.dtype, ious.dtype) == (np.int32, np.int16, np.float32)


def test_config_validation_names_flags():
    with pytest.raises(ValueError, match="--pos-iou"):
        LabelConfig(pos_iou=1.5)
    with pytest.raises(ValueError, match="--neg-iou-max .* must not exceed --pos-iou"):
        LabelConfig(pos_iou=0.4, neg_iou_max=0.5)
    with pytest.raises(ValueError, match="--neg-iou-min"):
        LabelConfig(neg_iou_min=0.6)
    with pytest.raises(ValueError, match="--preset"):
        label_config("nope")
    assert label_config("seed", pos_iou=0.7, neg_iou_max=None).pos_iou == 0.7


def test_region_details_hand_built():
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10]])
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [20, 0, 30, 5], [50, 50, 60, 60]])
    gt_index, class_ious, is_gt = region_details(boxes, gt, [1, 2], num_classes=3)
    assert gt_index.tolist() == [0, 0, 1, -1]
    np.testing.assert_allclose(class_ious, [[1, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0]])
    assert is_gt.tolist() == [True, False, False, False]
    none = region_details(boxes, np.zeros((0, 4)), [], num_classes=1)
    assert none[0].tolist() == [-1] * 4 and not none[2].any()
