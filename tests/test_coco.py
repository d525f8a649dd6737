"""COCO instances files read like VOC folders, and COCO's metrics by pycocotools."""

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_convert

from rcnn.cli import main
from rcnn.data.annotations import boxes_to_coco, coco_to_box, coco_to_boxes, voc_to_box
from rcnn.data.coco import COCODataset, COCOFormatError
from rcnn.data.config import PrepareConfig
from rcnn.data.readers import open_dataset
from rcnn.errors import ConfigError, RcnnError
from rcnn.evaluation.coco_eval import evaluate_results, ground_truth, results_of
from tests.helpers import TINY_FLAGS, draw_scene, write_coco
from tests.helpers import coco_annotation as ann
from tests.helpers import coco_image as image

CLASSES = ["car", "bus"]


def test_coco_boxes_convert_as_torchvision_does():
    rng = np.random.default_rng(0)
    xywh = np.concatenate([rng.integers(0, 300, (50, 2)), rng.integers(1, 200, (50, 2))], axis=1)
    expected = box_convert(torch.tensor(xywh, dtype=torch.float64), "xywh", "xyxy").numpy()
    assert np.array_equal([coco_to_box(*row) for row in xywh.tolist()], expected)
    assert np.array_equal(boxes_to_coco(expected), xywh)
    floats = xywh + rng.random((50, 4))
    expected = box_convert(torch.tensor(floats), "xywh", "xyxy").numpy()
    assert np.allclose(coco_to_boxes(floats), expected)
    assert coco_to_box(10.4, 5.6, 20.2, 9.8) == (10, 6, 31, 15)  # COCO's fractional boxes
    # The same pixels by both conventions: VOC's 1-based inclusive 11..30 is COCO's x=10, w=20.
    assert voc_to_box(11, 6, 30, 15) == coco_to_box(10, 5, 20, 10)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """A synthetic set of cars and buses written as VOC and as COCO files."""
    root = tmp_path_factory.mktemp("coco") / "synth"
    main(["synth", str(root), "--images", "10", "--classes", *CLASSES, "--size", "128x96",
          "--seed", "3", "--test-fraction", "0.3", "--coco"])  # fmt: skip
    return root


def coco_flags(root):
    return ["--coco", str(root / "coco" / "instances_{split}.json"), "--images",
            str(root / "JPEGImages")]  # fmt: skip


def test_both_readers_give_the_same_scenes(both):
    voc = open_dataset(str(both))
    coco = open_dataset(
        None, str(both / "coco" / "instances_{split}.json"), str(both / "JPEGImages")
    )
    seen_difficult = False
    for split in ("train", "val", "test"):
        assert coco.ids(split) == voc.ids(split)
        assert coco.select_images(split, CLASSES) == voc.select_images(split, CLASSES)
        for image_id in voc.ids(split):
            a, b = voc.annotation(image_id), coco.annotation(image_id)
            assert [(o.name, o.box, o.difficult) for o in a.objects] == [
                (o.name, o.box, o.difficult) for o in b.objects
            ]
            assert (a.width, a.height) == (b.width, b.height)
            assert voc.image_path(image_id) == coco.image_path(image_id)
            seen_difficult |= any(o.difficult for o in a.objects)
    assert seen_difficult  # crowd read as difficult is exercised
    assert coco.groups("train") == {"vehicles": ("car", "bus")}  # supercategories


def test_prepare_gives_the_same_regions_from_both_readers(both, tmp_path, capsys):
    from rcnn.data.regions import RegionSet

    common = ["--classes", *CLASSES, "--mode", "fast", "--workers", "1", "--no-progress",
              "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    main(["prepare", "--voc-root", str(both), "--out", str(tmp_path / "voc"), *common])
    main(["prepare", *coco_flags(both), "--out", str(tmp_path / "coco"), *common])
    for split in ("train", "val"):
        a = RegionSet.load(tmp_path / "voc" / split)
        b = RegionSet.load(tmp_path / "coco" / split)
        assert a.image_paths == b.image_paths and len(a) > 0
        for name in ("image_index", "boxes", "labels", "ious"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        for name, array in a.truth.arrays().items():
            assert np.array_equal(array, b.truth.arrays()[name]), name
    summary = json.loads((tmp_path / "coco" / "summary.json").read_text())
    assert summary["coco"].endswith("instances_{split}.json") and "voc_root" not in summary
    # STORE=SPLIT: a split stored under the name training reads (COCO's are train2017, ...).
    main(["prepare", *coco_flags(both), "--split", "train=val", "--out", str(tmp_path / "as"),
          *common])  # fmt: skip
    stored = RegionSet.load(tmp_path / "as" / "train")
    assert np.array_equal(stored.boxes, RegionSet.load(tmp_path / "voc" / "val").boxes)
    assert not (tmp_path / "as" / "val").exists()
    with pytest.raises(ConfigError, match="give NAME or STORE=NAME"):
        PrepareConfig(str(both), "x", splits=["train=a=b"])
    with pytest.raises(ConfigError, match="names a split twice"):
        PrepareConfig(str(both), "x", splits=["train", "train=val"])


def test_bad_coco_files_are_named_or_left_out_with_a_warning(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    path = tmp_path / "a.json"
    cases = [
        ([image(1), image(1)], [], "image id 1 is used twice"),
        ([image(1)], [ann(1, 1, [0, 0, 5, 5]), ann(1, 1, [0, 0, 5, 5])], "annotation id 1"),
    ]
    for imgs, anns, message in cases:
        write_coco(path, imgs, anns)
        with pytest.raises(COCOFormatError, match=message):
            COCODataset(path, images).ids("x")
    cats = [{"id": 1, "name": "car"}, {"id": 1, "name": "bus"}]
    with pytest.raises(COCOFormatError, match="category id 1 is used twice"):
        COCODataset(write_coco(path, [image(1)], [], cats), images).ids("x")
    cats = [{"id": 1, "name": "car"}, {"id": 2, "name": " Car"}]
    with pytest.raises(COCOFormatError, match=r"named \['car'\] twice"):
        COCODataset(write_coco(path, [image(1)], [], cats), images).ids("x")
    for name in ("/etc/hostname", "../x.jpg"):
        with pytest.raises(COCOFormatError, match="which leaves --images"):
            COCODataset(write_coco(path, [image(1, name)], []), images).ids("x")
    with pytest.raises(COCOFormatError, match=f"not a readable file .*folder.*'{images}'"):
        COCODataset(images, images).ids("x")  # a folder, named (not its file descriptor)
    path.write_text("{not json")
    with pytest.raises(COCOFormatError, match=f"--coco {path}: not JSON"):
        COCODataset(path, images).ids("x")
    path.write_text("[" * 200000 + "]" * 200000)
    with pytest.raises(COCOFormatError, match=f"--coco {path}: not JSON .*nested too deeply"):
        COCODataset(path, images).ids("x")
    path.write_text("[]")
    with pytest.raises(COCOFormatError, match="expected a COCO instances file"):
        COCODataset(path, images).ids("x")
    with pytest.raises(COCOFormatError, match="file not found"):
        COCODataset(tmp_path / "none.json", images).ids("x")
    with pytest.raises(FileNotFoundError, match="--images"):
        COCODataset(path, tmp_path / "no-images").ids("x")

    # Unknown images and categories, empty or negative boxes: left out, named in one warning.
    anns = [
        ann(1, 1, [10, 10, 20, 20]),
        ann(2, 7, [10, 10, 20, 20]),  # no image 7
        ann(3, 1, [10, 10, 20, 20], category=9),  # no category 9
        ann(4, 1, [10, 10, 0, 20]),  # zero width
        ann(5, 1, [10, 10, -5, 20]),  # negative
        ann(6, 1, [500, 500, 5, 5]),  # outside the 96x72 image
        ann(7, 1, [1, 2, float("nan"), 4]),
        ann(8, 1, [0, 0, 120, 20]),  # reaches outside: clipped
    ]
    write_coco(path, [image(1)], anns)
    with caplog.at_level(logging.WARNING):
        dataset = COCODataset(path, images)
        found = dataset.annotation(dataset.ids("x")[0])
    assert [o.box for o in found.objects] == [(10, 10, 30, 30), (0, 0, 96, 20)]
    text = caplog.text
    assert "1 annotation(s) name an image id the file does not list, left out: ids 2" in text
    assert "name a category id the file does not list, left out: ids 3" in text
    assert "4 annotation(s) have a zero-area, negative, non-finite or outside-the-image box, " \
           "left out: ids 4, 5, 6, 7" in text  # fmt: skip


def test_classes_images_and_splits_are_checked(tmp_path, caplog, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in (1, 2):
        cv2.imwrite(str(images / f"im{i}.jpg"), draw_scene(i))
    cats = [{"id": 1, "name": "car"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bus"}]
    anns = [ann(1, 1, [10, 10, 20, 20]), ann(2, 2, [5, 5, 20, 20], 2), ann(3, 3, [5, 5, 9, 9], 3)]
    path = write_coco(tmp_path / "a.json", [image(1), image(2), image(3)], anns, cats)
    dataset = COCODataset(path, images)
    with caplog.at_level(logging.WARNING):
        assert dataset.select_images("x", ["car"]) == ["im1"]
    assert "2 categories not in --classes are left out: bus, dog" in caplog.text
    with pytest.raises(
        ConfigError, match=r"\['cat'\] not among the categories .* \(bus, car, dog\)"
    ):
        dataset.select_images("x", ["car", "cat"])
    with pytest.raises(COCOFormatError, match="no image with a \\(non-crowd\\) object"):
        COCODataset(write_coco(tmp_path / "b.json", [image(1)], [ann(1, 1, [1, 1, 9, 9], crowd=1)]),
                    images).select_images("x", ["car"])  # fmt: skip
    # An image listed but missing on disk: `rcnn prepare` skips it, `rcnn test` stops; both
    # name it.
    from rcnn.detection.testing import split_images

    argv = ["prepare", "--coco", str(path), "--images", str(images), "--split", "train",
            "--classes", "car", "bus", "--out", str(tmp_path / "r"), "--mode", "fast",
            "--workers", "1", "--no-progress", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 0
    (skipped,) = json.loads((tmp_path / "r" / "summary.json").read_text())["splits"]["train"][
        "skipped"
    ]
    assert skipped["image"] == "im3" and "im3.jpg" in skipped["reason"]

    with pytest.raises(RcnnError, match=r"names 1 image\(s\) that are missing, e\.g\. .*im3\.jpg"):
        split_images(dataset, "x")
    # Several splits need {split}; the two flags go together.
    with pytest.raises(ConfigError, match=r"one file, one split, .* put \{split\} in --coco"):
        dataset.check_splits(["train", "val"])
    for flags, message in [
        (["--coco", str(path)], "needs --images DIR"),
        (["--coco", str(path), "--images", str(images), "--voc-root", str(tmp_path)], "not both"),
        (["--images", str(images)], "the dataset is needed"),
    ]:
        assert main(["prepare", "--out", str(tmp_path / "out"), *flags]) == 2
        assert message in capsys.readouterr().err
    # File names sharing a stem, or with spaces (result files separate fields by them): images
    # are named by their COCO ids.
    path = write_coco(tmp_path / "c.json", [image(4, "a/x.jpg"), image(5, "b/x.jpg")], [])
    assert COCODataset(path, images).ids("x") == ["4", "5"]
    path = write_coco(tmp_path / "d.json", [image(6, "my photo.jpg"), image(7)], [])
    assert COCODataset(path, images).ids("x") == ["6", "7"]


def test_an_image_in_two_split_files_must_agree(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    write_coco(tmp_path / "train.json", [image(1), image(2)],
               [ann(1, 1, [1, 1, 9, 9]), ann(2, 2, [3, 3, 9, 9])])  # fmt: skip
    write_coco(tmp_path / "val.json", [image(1)], [ann(1, 1, [2, 2, 9, 9])])
    # The same annotations in another order and with other ids (train + trainval): agreed.
    write_coco(tmp_path / "trainval.json", [image(2), image(1)],
               [ann(20, 2, [3, 3, 9, 9]), ann(10, 1, [1, 1, 9, 9])])  # fmt: skip
    dataset = COCODataset(tmp_path / "{split}.json", tmp_path / "train")
    dataset.ids("train")
    assert dataset.ids("trainval") == ["im2", "im1"]
    with pytest.raises(COCOFormatError, match="im1 is in .*train.json and .*val.json with other"):
        dataset.ids("val")
    # One name for two files (each split its own folder, as COCO's): names are unique within
    # a split; a name stands for the image of the split asked for last.
    dataset = COCODataset(tmp_path / "{split}.json", tmp_path / "{split}")
    assert dataset.ids("train") == ["im1", "im2"] and dataset.ids("val") == ["im1"]
    assert dataset.image_path("im1") == tmp_path / "val" / "im1.jpg"
    assert dataset.annotation("im1").objects[0].box == (2, 2, 11, 11)
    dataset.select_images("train", ["car"])
    assert dataset.image_path("im1") == tmp_path / "train" / "im1.jpg"
    assert dataset.annotation("im1").objects[0].box == (1, 1, 10, 10)


def test_per_split_folders_may_repeat_file_names(tmp_path):
    """COCO's layout (images/train/0000.jpg, images/val/0000.jpg) prepared in one run, whose
    stores `rcnn train` takes."""
    from rcnn.data.regions import load_train_val

    boxes = {
        "train": [(10, 10, 50, 40), (20, 30, 70, 60)],
        "val": [(40, 20, 80, 60), (5, 5, 40, 35)],
    }
    for split, seed in (("train", 1), ("val", 5)):
        folder = tmp_path / "images" / split
        folder.mkdir(parents=True)
        for n, box in enumerate(boxes[split]):
            cv2.imwrite(str(folder / f"000{n}.jpg"), draw_scene(seed + n, boxes=[box]))
        entries = [image(n + 1, f"000{n}.jpg") for n in range(2)]
        anns = [ann(n + 1, n + 1, boxes_to_coco(np.array(b))[0].tolist())
                for n, b in enumerate(boxes[split])]  # fmt: skip
        write_coco(tmp_path / f"{split}.json", entries, anns)
    out = tmp_path / "regions"
    argv = ["prepare", "--coco", str(tmp_path / "{split}.json"), "--images",
            str(tmp_path / "images" / "{split}"), "--split", "train", "val", "--classes", "car",
            "--out", str(out), "--mode", "fast", "--workers", "1", "--no-progress",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 0
    train, val = load_train_val(out)
    for split, store in (("train", train), ("val", val)):
        folder = (tmp_path / "images" / split).resolve()
        assert store.image_paths == [str(folder / "0000.jpg"), str(folder / "0001.jpg")]
        assert store.truth.boxes.tolist() == [list(b) for b in boxes[split]]
    run = ["train", "--data", str(out), "--out", str(tmp_path / "run"), "--epochs", "1"]
    assert main([*run, *TINY_FLAGS]) == 0


# COCO's metrics on a hand-computed case. Two images of 200x200, one class:
#   g1 in image 1: x1 y1 x2 y2 = 10 10 50 50 (area 1600: medium)
#   g2 in image 2: 20 20 140 140 (area 14400: large)
#   d1 image 1, score 0.9: 10 10 50 43, IoU 1320 / 1600 = 0.825 with g1 (medium)
#   d2 image 2, score 0.8: 20 20 150 98, IoU 9360 / 15180 = 0.617 with g2 (area 10140: large)
#   d3 image 1, score 0.7: 150 150 190 190, on nothing (medium)
# At IoU thresholds .50 .55 .60 both objects are found before the false d3: AP 1. At .65 to
# .80 only d1 is a hit: precision 1 up to recall 0.5, so 51 of COCO's 101 recall points: AP
# 51/101. At .85 to .95 nothing is found: 0. Medium objects (g1; the large d2 is ignored): AP
# 1 up to .80 (7 thresholds), then 0. Large (g2; the medium d1 and d3 are ignored): 1 up to .60,
# then 0. Recall: 1 (3 thresholds), 0.5 (4), 0 (3).
HAND = {
    "AP": (3 + 4 * 51 / 101) / 10,
    "AP50": 1.0,
    "AP75": 51 / 101,
    "APm": 0.7,
    "APl": 0.3,
    "AR100": (3 + 4 * 0.5) / 10,
}
TRUTH = [(1, (10, 10, 50, 50)), (2, (20, 20, 140, 140))]
DETS = [(1, 0.9, (10, 10, 50, 43)), (2, 0.8, (20, 20, 150, 98)), (1, 0.7, (150, 150, 190, 190))]


def hand_detections(d3_score=0.7):
    images = np.array([i - 1 for i, _, _ in DETS])
    scores = np.array([s for _, s, _ in DETS[:2]] + [d3_score])
    return {1: (images, scores, np.array([b for _, _, b in DETS], float))}


def check_hand_metrics(found):
    for key, value in HAND.items():
        assert found[key] == pytest.approx(value, abs=1e-9), key
    assert np.isnan(found["APs"])  # no small object: COCO prints -1
    assert found["classes"]["car"] == pytest.approx(HAND["AP"], abs=1e-9)


def test_coco_metrics_match_a_hand_computed_case_on_coco_and_voc_ground_truth(tmp_path, make_voc):
    images = tmp_path / "images"
    images.mkdir()
    anns = [ann(n, i, boxes_to_coco(np.array(b))[0].tolist()) for n, (i, b) in enumerate(TRUTH, 1)]
    sized = [image(1, size=(200, 200)), image(2, size=(200, 200))]
    coco = COCODataset(write_coco(tmp_path / "a.json", sized, anns), images)
    ids = coco.ids("x")
    truth = ground_truth(coco, "x", ids, ["car"])
    results = results_of(hand_detections(), truth)
    assert [r["image_id"] for r in results] == [1, 1, 2]  # COCO's ids, by image
    check_hand_metrics(evaluate_results(results, truth, ["car"]))

    # A VOC dataset of the same scene, its ground truth converted in memory. A difficult
    # object under d3 is a crowd region: d3 neither counts nor penalizes, even ranked first.
    specs = [("000001", "test", [("car", TRUTH[0][1], False), ("car", DETS[2][2], True)]),
             ("000002", "test", [("car", TRUTH[1][1], False)])]  # fmt: skip
    voc = open_dataset(str(make_voc(specs, size=(200, 200))))
    truth = ground_truth(voc, "test", voc.ids("test"), ["car"])
    check_hand_metrics(evaluate_results(results_of(hand_detections(0.95), truth), truth, ["car"]))
    # Without it, d3 ranked first is a false positive before every hit.
    truth = ground_truth(coco, "x", ids, ["car"])
    first = evaluate_results(results_of(hand_detections(0.95), truth), truth, ["car"])
    assert first["AP50"] < 0.7


def test_per_class_ap_follows_the_classes_whatever_the_category_ids(tmp_path):
    # Categories numbered against the classes' order, annotation ids 0 and a string (both
    # legal in a file; pycocotools' matching takes 0 for "no match" and needs numbers).
    images = tmp_path / "images"
    images.mkdir()
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    anns = [ann(0, 1, [10, 10, 40, 40], 3), ann("p", 2, [20, 20, 30, 60], 1)]
    sized = [image(1, size=(200, 200)), image(2, size=(200, 200))]
    coco = COCODataset(write_coco(tmp_path / "a.json", sized, anns, cats), images)
    truth = ground_truth(coco, "x", coco.ids("x"), ["car", "person"])
    assert truth.categories == [3, 1]
    found = {1: (np.array([0]), np.array([0.9]), np.array([[10.0, 10.0, 50.0, 50.0]])),
             2: (np.zeros(0, int), np.zeros(0), np.zeros((0, 4)))}  # fmt: skip
    metrics = evaluate_results(results_of(found, truth), truth, ["car", "person"])
    assert metrics["classes"] == pytest.approx({"car": 1.0, "person": 0.0})
    assert metrics["AP50"] == pytest.approx(0.5)


def test_each_image_keeps_its_100_best_detections():
    truth = type("T", (), {"images": ["a", "b"], "categories": [7, 8]})()
    rng = np.random.default_rng(0)
    scores = rng.random(300)
    images = np.repeat([0, 1], 150)
    boxes = np.tile([0.0, 0.0, 10.0, 10.0], (300, 1))
    results = results_of({1: (images[::2], scores[::2], boxes[::2]),
                          2: (images[1::2], scores[1::2], boxes[1::2])}, truth)  # fmt: skip
    for name, mine in (("a", scores[:150]), ("b", scores[150:])):
        kept = sorted(r["score"] for r in results if r["image_id"] == name)
        assert kept == sorted(mine)[-100:]
    assert {r["category_id"] for r in results} == {7, 8}
