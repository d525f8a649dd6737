import numpy as np
import pytest
import torch
from torchvision.ops import box_area as tv_box_area
from torchvision.ops import box_iou as tv_box_iou

from rcnn.ops.boxes import box_area, box_iou, clip_boxes, nonempty, unique_boxes


def random_boxes(rng, n, limit=200):
    xy = rng.integers(0, limit, size=(n, 2))
    wh = rng.integers(1, limit // 2, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_iou_matches_torchvision():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 50), random_boxes(rng, 30)
    expected = tv_box_iou(torch.from_numpy(a).double(), torch.from_numpy(b).double()).numpy()
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=1e-12, atol=1e-12)
    expected_area = tv_box_area(torch.from_numpy(a).double()).numpy()
    np.testing.assert_allclose(box_area(a), expected_area)


def test_iou_hand_computed():
    # Two 10x10 boxes sharing a 5x10 strip: 50 / (100 + 100 - 50).
    iou = box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [10, 0, 20, 10], [0, 0, 10, 10]])
    np.testing.assert_allclose(iou, [[50 / 150, 0.0, 1.0]])


def test_iou_shapes_and_empty_union():
    assert box_iou(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)
    assert box_iou([[3, 3, 3, 3]], [[3, 3, 3, 3]])[0, 0] == 0.0


def test_exclusive_convention_area_is_slice_size():
    image = np.zeros((40, 60), dtype=np.uint8)
    x1, y1, x2, y2 = 7, 3, 19, 30
    assert image[y1:y2, x1:x2].size == box_area([[x1, y1, x2, y2]])[0]


def test_clip_and_nonempty():
    boxes = np.array([[-5, -5, 10, 10], [50, 50, 70, 80], [65, 10, 90, 20]])
    clipped = clip_boxes(boxes, width=60, height=60)
    np.testing.assert_array_equal(clipped, [[0, 0, 10, 10], [50, 50, 60, 60], [60, 10, 60, 20]])
    np.testing.assert_array_equal(nonempty(clipped), [True, True, False])


@pytest.mark.parametrize("seed", [0, 1])
def test_unique_boxes_is_order_independent(seed):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 40)
    boxes = np.concatenate([boxes, boxes[:10]])
    shuffled = boxes[rng.permutation(len(boxes))]
    np.testing.assert_array_equal(unique_boxes(boxes), unique_boxes(shuffled))
    assert len(unique_boxes(boxes)) == len({tuple(b) for b in boxes.tolist()})
    assert unique_boxes(boxes).dtype == np.int32
