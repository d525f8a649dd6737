import os

import cv2
import numpy as np
import pytest
import torch

from rcnn.data.regions import RegionSet, RegionStoreError
from rcnn.data.warps import (
    ImageStore,
    RegionDataset,
    context_box,
    context_boxes,
    mean_fill,
    normalize,
    random_flip,
    warp_region,
)


@pytest.fixture
def two_images(tmp_path):
    """Two BGR files on disk: a red block on grey, and a blue block on black."""
    a = np.full((60, 80, 3), 90, np.uint8)
    a[10:30, 20:50] = (0, 0, 255)  # BGR red
    b = np.zeros((50, 40, 3), np.uint8)
    b[5:45, 5:15] = (255, 0, 0)  # BGR blue
    paths = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    cv2.imwrite(paths[0], a)
    cv2.imwrite(paths[1], b)
    return paths


def region_set(paths, boxes, index, labels):
    n = len(boxes)
    return RegionSet(paths, index, boxes, labels, np.zeros(n), ["car"], [(80, 60), (40, 50)])


def test_store_is_rgb_and_shared(two_images):
    store = ImageStore(two_images)
    assert store.data.is_shared()
    assert store.image(0).shape == (60, 80, 3) and store.image(1).shape == (50, 40, 3)
    np.testing.assert_array_equal(store.image(0)[15, 30], [255, 0, 0])  # red stays red in RGB
    np.testing.assert_array_equal(store.image(1)[20, 10], [0, 0, 255])
    np.testing.assert_array_equal(store.image(0), cv2.imread(two_images[0])[..., ::-1])


def test_missing_image_names_file(two_images, tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.png: image missing; the region store"):
        ImageStore([two_images[0], str(tmp_path / "gone.png")])


def test_an_image_that_is_there_is_never_called_missing(two_images, tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    cases = {"pipe.png": "pipe.png: cannot read image (not a regular file)",
             "broken.png": "broken.png: not a readable image"}  # fmt: skip
    for name, message in cases.items():
        with pytest.raises(RegionStoreError) as caught:
            ImageStore([two_images[0], str(tmp_path / name)])
        assert message in str(caught.value) and "missing" not in str(caught.value)


def test_warp_matches_opencv_resize_of_the_crop(two_images):
    rs = region_set(two_images, [[20, 10, 50, 30], [3, 4, 30, 47]], [0, 1], [1, 0])
    ds = RegionDataset(rs, ImageStore(two_images), size=64)
    for i, (path, (x1, y1, x2, y2)) in enumerate(zip(two_images, rs.boxes, strict=True)):
        rgb = cv2.imread(path)[..., ::-1]
        expected = cv2.resize(
            np.ascontiguousarray(rgb[y1:y2, x1:x2]), (64, 64), interpolation=cv2.INTER_LINEAR
        )
        image, label = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected)
        assert label == rs.labels[i]


def test_context_box_geometry():
    # A 100-wide box warped to 227 with 16 pixels of context grows by 227 / 195.
    box = context_box([50, 50, 150, 100], size=227, pad=16)
    np.testing.assert_allclose(box[2] - box[0], 100 * 227 / 195)
    np.testing.assert_allclose((box[0] + box[2]) / 2, 100)
    np.testing.assert_allclose(context_box([1, 2, 3, 4], 227, 0), [1, 2, 3, 4])


@pytest.mark.parametrize("pad", [0, 16])
def test_batched_context_boxes(pad):
    rng = np.random.default_rng(0)
    x1, y1 = rng.uniform(0, 400, 300), rng.uniform(0, 300, 300)  # float boxes too
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, 100, 300), y1 + rng.uniform(1, 75, 300)], 1)
    boxes = np.concatenate([boxes, boxes.round()])
    grow = 227 / (227 - 2 * pad)
    expected = [
        [
            (a + c) / 2 - (c - a) / 2 * grow,
            (b + d) / 2 - (d - b) / 2 * grow,
            (a + c) / 2 + (c - a) / 2 * grow,
            (b + d) / 2 + (d - b) / 2 * grow,
        ]
        for a, b, c, d in boxes.tolist()
    ]
    np.testing.assert_allclose(context_boxes(boxes, 227, pad), expected, rtol=0, atol=1e-9)
    for box, row in zip(boxes[:20], context_boxes(boxes[:20], 227, pad), strict=True):
        np.testing.assert_array_equal(context_box(box, 227, pad), row)


def test_context_padding_places_box_in_the_middle_and_fills_outside():
    image = np.zeros((100, 100, 3), np.uint8)
    image[20:80, 20:80] = 200  # the box itself is bright, its context dark
    out = warp_region(image, [20, 20, 80, 80], size=100, pad=10)
    bright = np.flatnonzero(out[50, :, 0] > 100)
    assert abs(bright[0] - 10) <= 1 and abs(bright[-1] - 89) <= 1
    # A box at the corner: the context outside the image takes the fill colour.
    corner = warp_region(image, [0, 0, 40, 40], size=100, pad=10, fill=(1, 2, 3))
    np.testing.assert_array_equal(corner[2, 2], [1, 2, 3])
    np.testing.assert_array_equal(corner[30, 30], [0, 0, 0])  # image pixel (10, 10)


def test_lookup_matches_brute_force_search(prepared):
    rs = RegionSet.load(prepared / "train")
    ds = RegionDataset(rs, ImageStore(rs.image_paths), size=32)
    rng = np.random.default_rng(0)
    counts = np.bincount(rs.image_index, minlength=len(rs.image_paths))
    for i in rng.choice(len(rs), size=20, replace=False):
        # The reference's way: walk the cumulative per-image counts to find region i's image.
        image_id, total = 0, counts[0]
        while i >= total:
            image_id += 1
            total += counts[image_id]
        x1, y1, x2, y2 = rs.boxes[i]
        rgb = cv2.imread(rs.image_paths[image_id])[..., ::-1]
        expected = cv2.resize(np.ascontiguousarray(rgb[y1:y2, x1:x2]), (32, 32))
        np.testing.assert_array_equal(ds[int(i)][0].permute(1, 2, 0).numpy(), expected)


def test_validation_items_are_deterministic(prepared):
    rs = RegionSet.load(prepared / "val")
    ds = RegionDataset(rs, ImageStore(rs.image_paths), size=48, pad=4)
    for i in range(0, len(rs), max(1, len(rs) // 10)):
        assert torch.equal(ds[i][0], ds[i][0])


def test_normalize_and_flip():
    batch = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    out = normalize(batch, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    expected = (batch[:, 1].float() / 255 - 0.4) / 0.25
    torch.testing.assert_close(out[:, 1], expected)
    flipped = random_flip(batch, torch.Generator().manual_seed(0))
    again = random_flip(batch, torch.Generator().manual_seed(0))
    assert torch.equal(flipped, again)
    for orig, new in zip(batch, flipped, strict=True):
        assert torch.equal(new, orig) or torch.equal(new, orig.flip(-1))
    columns = torch.tensor([0, 1], dtype=torch.uint8).view(1, 1, 1, 2).repeat(1000, 1, 1, 1)
    many = random_flip(columns, torch.Generator().manual_seed(1))
    assert 400 < int((many[:, 0, 0, 0] == 1).sum()) < 600
    assert mean_fill((0.485, 0.456, 0.406)) == (124, 116, 104)


def test_bad_context_pad(prepared):
    rs = RegionSet.load(prepared / "val")
    with pytest.raises(ValueError, match="--context-pad"):
        RegionDataset(rs, ImageStore(rs.image_paths), size=32, pad=16)


def test_image_changed_since_prepare_is_named(two_images):
    from rcnn.data.regions import RegionStoreError

    rs = region_set(two_images, [[0, 0, 10, 10]], [0], [1])
    assert ImageStore.of(rs).shapes.tolist() == [[60, 80], [50, 40]]  # as recorded
    cv2.imwrite(two_images[1], np.zeros((50, 41, 3), np.uint8))  # resized since
    with pytest.raises(RegionStoreError, match=r"b.png: the image is 41x50 but was 40x50"):
        ImageStore.of(rs)
