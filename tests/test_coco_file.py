"""One COCO instances file read and checked (rcnn.data.coco_file): what is refused, what is
left out with a warning, and the ground truth pycocotools is given."""

import logging

import cv2
import numpy as np
import pytest
from pycocotools import mask as maskUtils

from rcnn.cli import main
from rcnn.data.coco import COCODataset
from rcnn.data.coco_file import COCOFormatError, load_split
from rcnn.evaluation.coco_eval import evaluate_results, ground_truth, results_of
from tests.helpers import coco_annotation as ann
from tests.helpers import coco_image as image
from tests.helpers import draw_scene, write_coco


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    return folder


def kept(found) -> list[dict]:
    """The annotations pycocotools holds (renumbered 1..N)."""
    return found.coco.dataset["annotations"]


def metrics_of(dataset, boxes: list) -> dict:
    """COCO's metrics of detections (score 0.9) of class car at ``boxes`` (image, x1 y1 x2 y2)."""
    truth = ground_truth(dataset, "x", dataset.ids("x"), ["car"])
    found = {1: (np.array([i for i, _ in boxes]), np.full(len(boxes), 0.9),
                 np.array([b for _, b in boxes], float))}  # fmt: skip
    return evaluate_results(results_of(found, truth), truth, ["car"])


def test_an_area_that_is_not_a_finite_number_is_left_out_and_a_missing_one_computed(
    tmp_path, images, caplog
):
    anns = [
        ann(1, 1, [10, 10, 20, 20]),  # no area: its box's, 400 (small)
        {**ann(2, 1, [40, 10, 20, 20]), "area": float("nan")},  # was small, medium and large
        {**ann(3, 1, [10, 40, 20, 20]), "area": "400"},  # was a traceback in COCOeval
        {**ann(4, 1, [40, 40, 20, 20]), "area": -1},
        {**ann(5, 1, [70, 40, 20, 20]), "area": True},
        {**ann(6, 1, [70, 10, 10, 10]), "area": 50},  # the file's area is COCO's
    ]
    dataset = COCODataset(write_coco(tmp_path / "a.json", [image(1)], anns), images)
    with caplog.at_level(logging.WARNING):
        found = dataset.split("x")
    assert "4 annotation(s) have an 'area' that is not a finite number >= 0, left out: " \
           "ids 2, 3, 4, 5" in caplog.text  # fmt: skip
    assert [a["area"] for a in kept(found)] == [400.0, 50.0]
    assert [o.box for o in found.annotations["im1"].objects] == [(10, 10, 30, 30), (70, 10, 80, 20)]
    found = metrics_of(dataset, [(0, (10, 10, 30, 30)), (0, (70, 10, 80, 20))])
    assert (found["AP"], found["APs"]) == pytest.approx((1.0, 1.0))
    assert np.isnan(found["APm"]) and np.isnan(found["APl"])  # no object of those sizes


def test_image_or_category_ids_mixing_numbers_and_strings_or_bools_are_refused(
    tmp_path, images, caplog
):
    path = tmp_path / "a.json"
    # Named by their ids (the stems are equal), 1 and "1" were one image: the other vanished.
    write_coco(path, [image(1, "a/x.jpg"), image("1", "b/x.jpg")], [])
    with pytest.raises(COCOFormatError, match=r"a.json: image ids mix numbers \(1\) and strings"):
        load_split(path, images)
    cats = [{"id": 1, "name": "car"}, {"id": "2", "name": "bus"}]
    write_coco(path, [image(1)], [], cats)
    with pytest.raises(COCOFormatError, match=r"category ids mix numbers \(1\) and strings \('2'"):
        load_split(path, images)
    write_coco(path, [image(True)], [])
    with pytest.raises(COCOFormatError, match="image id True is not a whole number or a string"):
        load_split(path, images)
    # true names no image or category (it equals 1 in Python): left out, named.
    anns = [ann(1, True, [1, 1, 9, 9]), ann(2, 1, [1, 1, 9, 9], category=True)]
    with caplog.at_level(logging.WARNING):
        found = load_split(write_coco(path, [image(1)], anns), images)
    assert kept(found) == [] and found.annotations["im1"].objects == ()
    assert "name an image id the file does not list, left out: ids 1" in caplog.text
    assert "name a category id the file does not list, left out: ids 2" in caplog.text


def test_iscrowd_is_0_or_1_and_unusable_image_sizes_are_named(tmp_path, images, caplog):
    crowds = [0, 1, False, True, "0", 2, -1, None, 0.5]
    anns = [ann(n, 1, [10, 10, 20, 20], crowd=c) for n, c in enumerate(crowds, start=1)]
    anns.append({k: v for k, v in ann(10, 1, [10, 10, 20, 20]).items() if k != "iscrowd"})
    with caplog.at_level(logging.WARNING):
        found = load_split(write_coco(tmp_path / "a.json", [image(1)], anns), images)
    assert [o.difficult for o in found.annotations["im1"].objects] == [0, 1, 0, 1, 0]
    assert [a["iscrowd"] for a in kept(found)] == [0, 1, 0, 1, 0]
    assert "5 annotation(s) have an 'iscrowd' other than 0 or 1 (or false or true), left out: " \
           "ids 5, 6, 7, 8, 9" in caplog.text  # fmt: skip

    # Sizes that are not whole numbers above 0: named by the reader, and not called XML's
    # (nor 0x0) by `rcnn prepare`, which reads the image's own size.
    entries = [image(1, size=(96.0, 72)), image(2, size=("96", 72)), image(3, size=(-96, 72)),
               image(4, size=(0, 72)), image(5, size=(96.5, 72)), image(6, size=(True, 72)),
               {"id": 7, "file_name": "im7.jpg"}, image(8, size=(120, 72))]  # fmt: skip
    for entry in entries:
        cv2.imwrite(
            str(images / entry["file_name"]), draw_scene(entry["id"], boxes=[(5, 5, 40, 40)])
        )
    anns = [ann(n, n, [5, 5, 35, 35]) for n in range(1, 9)]
    path = write_coco(tmp_path / "b.json", entries, anns)
    caplog.clear()
    argv = ["prepare", "--coco", str(path), "--images", str(images), "--split", "train",
            "--classes", "car", "--out", str(tmp_path / "r"), "--mode", "fast", "--workers", "1",
            "--no-progress", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    said = (
        "6 image(s) without a usable 'width' and 'height' (whole numbers above 0), their boxes "
        "not clipped to the image: ids 2, 3, 4, 5, 6 and 1 more"
    )
    assert said in caplog.text
    assert "im8: the annotation says 120x72 but the image is 96x72" in caplog.text
    assert "XML" not in caplog.text and "0x0" not in caplog.text
    assert load_split(path, images).annotations["im1"].width == 96  # 96.0 is a whole number


def test_a_box_past_the_border_is_clipped_for_both_metric_families(tmp_path, images):
    anns = [ann(1, 1, [80, 10, 40, 20]), ann(2, 1, [-5, 40, 20, 20]),
            ann(3, 2, [10.4, 5.6, 20.2, 9.8])]  # fmt: skip
    path = write_coco(tmp_path / "a.json", [image(1), image(2)], anns)
    dataset = COCODataset(path, images)
    found = dataset.split("x")
    # COCO's ground truth: clipped unrounded, values inside the image as the file gives them.
    assert [a["bbox"] for a in kept(found)] == [[80, 10, 16, 20], [0, 40, 15, 20],
                                                [10.4, 5.6, 20.2, 9.8]]  # fmt: skip
    assert [a["area"] for a in kept(found)] == [320.0, 300.0, pytest.approx(20.2 * 9.8)]
    # VOC's: the same boxes in whole pixels.
    assert [o.box for o in found.annotations["im1"].objects] == [(80, 10, 96, 30), (0, 40, 15, 60)]
    assert [o.box for o in found.annotations["im2"].objects] == [(10, 6, 31, 15)]
    # A detection of exactly the clipped box: IoU 1 for COCO's metrics too (0.4 with the
    # file's box, as pycocotools.mask.iou finds).
    assert maskUtils.iou([[80, 10, 16, 20]], [[80, 10, 40, 20]], [0])[0, 0] == pytest.approx(0.4)
    path = write_coco(tmp_path / "b.json", [image(1)], [ann(1, 1, [80, 10, 40, 20])])
    found = metrics_of(COCODataset(path, images), [(0, (80, 10, 96, 30))])
    assert (found["AP"], found["AP75"]) == pytest.approx((1.0, 1.0))


def test_a_digest_changes_with_its_image_s_annotations_only(tmp_path, images):
    entries = [image(1), image(2), image(3)]
    anns = [ann(n, n, [10, 10, 20, 20 + n]) for n in (1, 2, 3)]

    def digests(anns) -> dict:
        dataset = COCODataset(write_coco(tmp_path / "a.json", entries, anns), images)
        return {name: dataset.annotation_digest(name) for name in dataset.ids("x")}

    before = digests(anns)
    assert len(set(before.values())) == 3
    # One annotation more, first in the file (every later one is renumbered): im2 only.
    after = digests([ann(9, 2, [50, 30, 10, 10]), *anns])
    assert [n for n in before if before[n] != after[n]] == ["im2"]
    # The file's annotation ids, and the order of other images' annotations, are no content.
    assert digests([{**a, "id": 100 - a["id"]} for a in reversed(anns)]) == before
