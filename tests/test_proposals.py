from pathlib import Path

import cv2
import numpy as np
import pytest

from rcnn.data.config import ProposalConfig
from rcnn.data.proposals import ProposalCache, compute_proposals, selective_search
from tests.helpers import draw_scene


@pytest.fixture
def images(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.jpg"
        cv2.imwrite(str(path), draw_scene(i, (96, 72), [(10, 10, 50, 40), (55, 20, 90, 65)]))
        paths.append(str(path))
    return paths


def oracle(image, mode):
    """OpenCV's own boxes as a set, converted from (x, y, w, h)."""
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(image)
    getattr(search, f"switchToSelectiveSearch{mode.capitalize()}")()
    return {(x, y, x + w, y + h) for x, y, w, h in search.process().tolist()}


@pytest.mark.parametrize("mode", ["fast", "quality"])
def test_selective_search_matches_opencv_set(mode):
    image = draw_scene(0, (96, 72), [(10, 10, 50, 40)])
    boxes = selective_search(image, ProposalConfig(mode))
    assert {tuple(b) for b in boxes.tolist()} == oracle(image, mode)
    assert boxes.dtype == np.int32
    # sorted lexicographically and unique
    assert [tuple(b) for b in boxes.tolist()] == sorted({tuple(b) for b in boxes.tolist()})


def test_max_side_maps_boxes_back_to_full_size():
    image = draw_scene(1, (192, 144), [(20, 20, 100, 80)])
    boxes = selective_search(image, ProposalConfig("fast", max_side=96))
    small = cv2.resize(image, (96, 72), interpolation=cv2.INTER_AREA)
    expected = {tuple(2 * v for v in b) for b in oracle(small, "fast")}
    assert {tuple(b) for b in boxes.tolist()} == expected
    assert boxes[:, 2].max() <= 192 and boxes[:, 3].max() <= 144


def test_config_validation():
    with pytest.raises(ValueError, match="--mode"):
        ProposalConfig("slow")
    with pytest.raises(ValueError, match="--max-side"):
        ProposalConfig("fast", max_side=8)


def test_parallel_equals_serial_and_cache_is_reused(images, tmp_path):
    config = ProposalConfig("fast")
    serial = compute_proposals(images, config, tmp_path / "c1", workers=1, progress=False)
    parallel = compute_proposals(images, config, tmp_path / "c2", workers=2, progress=False)
    again = compute_proposals(images, config, tmp_path / "c2", workers=2, progress=False)
    for a, b, c in zip(serial, parallel, again, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.boxes, c.boxes)
        assert a.size == (96, 72) and not a.cached and not b.cached and c.cached
    entries = sorted((tmp_path / "c1").rglob("*.npz"))
    assert len(entries) == 3
    assert [e.read_bytes() for e in entries] == [
        (tmp_path / "c2" / e.relative_to(tmp_path / "c1")).read_bytes() for e in entries
    ]


def test_cache_key_depends_on_content_and_parameters(images):
    data = Path(images[0]).read_bytes()
    keys = {
        ProposalCache.key(data, ProposalConfig("fast")),
        ProposalCache.key(data, ProposalConfig("quality")),
        ProposalCache.key(data, ProposalConfig("fast", max_side=64)),
        ProposalCache.key(data + b"x", ProposalConfig("fast")),
    }
    assert len(keys) == 4


def test_damaged_cache_entry_is_recomputed(images, tmp_path, caplog):
    config = ProposalConfig("fast")
    first = compute_proposals(images[:1], config, tmp_path, workers=1, progress=False)
    (entry,) = tmp_path.rglob("*.npz")
    entry.write_bytes(b"garbage")
    second = compute_proposals(images[:1], config, tmp_path, workers=1, progress=False)
    assert "ignoring unreadable cache entry" in caplog.text
    assert not second[0].cached
    np.testing.assert_array_equal(first[0].boxes, second[0].boxes)


def test_missing_and_corrupt_images_reported(images, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    paths = [images[0], str(tmp_path / "missing.jpg"), str(corrupt)]
    results = compute_proposals(paths, ProposalConfig("fast"), tmp_path / "c", 2, progress=False)
    assert results[0].error == "" and len(results[0].boxes) > 0
    assert "missing.jpg: cannot read image" in results[1].error
    assert "corrupt.jpg: not a readable image" in results[2].error


def test_large_images_are_shrunk_by_default_and_small_ones_keep_their_entries(images):
    assert ProposalConfig().max_side == 1000  # a 6000x4000 photo: minutes and GBs at full size
    small = Path(images[0]).read_bytes()  # 96x72
    # An image that fits the cap is searched at full size: one cache entry, whatever the cap.
    assert ProposalCache.key(small, ProposalConfig("fast", 0)) == ProposalCache.key(
        small, ProposalConfig("fast", 1000)
    )
    assert ProposalCache.key(small, ProposalConfig("fast", 64)) != ProposalCache.key(
        small, ProposalConfig("fast", 0)
    )
    assert ProposalConfig("fast", 64).for_image((96, 72)).max_side == 64
    assert ProposalConfig("fast", 96).for_image((96, 72)).max_side == 0
