"""COCO results files (rcnn.evaluation.coco_eval): `rcnn test --dets FILE.json` checked
against pycocotools' own evaluation of the same files, its entries checked one by one, and the
same image ids for a VOC dataset and its COCO twin."""

import json
import warnings

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rcnn.cli import main
from rcnn.data.coco import coco_image_ids
from rcnn.data.readers import open_dataset
from rcnn.evaluation.coco_eval import ground_truth, results_of
from tests.helpers import coco_annotation, coco_image, write_coco

CARS = [(1, [10, 10, 40, 30]), (2, [50, 60, 30, 30])]
BUSES = [(1, [100, 100, 60, 50]), (2, [20, 120, 80, 40])]
CATEGORIES = [{"id": 1, "name": "car"}, {"id": 2, "name": "bus"}]


@pytest.fixture
def scene(tmp_path):
    """A COCO file of two 200x200 images with a car and a bus each, and its (empty) folder."""
    anns = [{**coco_annotation(n, i, box, category=k), "area": box[2] * box[3]}
            for n, (k, (i, box)) in enumerate([*((1, c) for c in CARS),
                                               *((2, b) for b in BUSES)], start=1)]  # fmt: skip
    sized = [coco_image(i, size=(200, 200)) for i in (1, 2)]
    path = write_coco(tmp_path / "instances.json", sized, anns, CATEGORIES)
    (tmp_path / "images").mkdir()
    return path, ["--coco", str(path), "--images", str(tmp_path / "images")]


def score(results, flags, out, *extra) -> dict:
    """`rcnn test --dets` of ``results`` (a list, written next to ``out``): metrics.json."""
    path = out.with_suffix(".json")
    path.write_text(json.dumps(results))
    assert main(["test", "--dets", str(path), *flags, "--out", str(out), *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def same(a, b) -> bool:
    """Equal numbers, NaN equal to NaN (COCO's -1: no object of a size)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_every_category_of_the_file_is_scored_as_cocoeval_does(scene, tmp_path):
    path, flags = scene
    # Cars found (one loosely, one twice), buses never: bus AP is 0, not left out of the means.
    results = [{"image_id": i, "category_id": 1, "bbox": box, "score": s}
               for (i, box), s in zip(CARS, (0.9, 0.8), strict=True)]  # fmt: skip
    results += [{"image_id": 2, "category_id": 1, "bbox": [50, 60, 36, 30], "score": 0.7}]
    found = score(results, flags, tmp_path / "all")
    assert sorted(found["classes"]) == ["bus", "car"]
    assert found["classes"]["bus"]["ap"] == 0 and found["map"] == found["classes"]["car"]["ap"] / 2
    # pycocotools on the file itself: every category, as our numbers.
    truth = COCO(str(path))
    run = COCOeval(truth, truth.loadRes(results), "bbox")
    run.evaluate(), run.accumulate(), run.summarize()
    for key, value in zip(("AP", "AP50", "AP75"), run.stats, strict=False):
        assert found["coco"][key] == pytest.approx(value), key
    assert found["coco"]["AP"] == pytest.approx(found["coco"]["classes"]["car"] / 2)
    chosen = score(results, flags, tmp_path / "chosen", "--classes", "car", "bus")
    assert same(chosen["coco"], found["coco"]) and chosen["map"] == found["map"]


def test_many_detections_an_image_are_scored_as_cocoeval_scores_the_file(scene, tmp_path):
    path, flags = scene
    # 150 detections an image over two categories: every true box scored low, below 100
    # higher-scored misses of the other category, which COCOeval ranks apart.
    rng = np.random.default_rng(0)
    results = []
    for image in (1, 2):
        for category in (1, 2):
            xy = rng.uniform(0, 150, (75, 2)).round(2)
            wh = rng.uniform(5, 50, (75, 2)).round(2)
            scores = rng.uniform(0.3, 1, 75).round(4)
            results += [
                {"image_id": image, "category_id": category, "bbox": [*p, *s], "score": float(v)}
                for p, s, v in zip(xy.tolist(), wh.tolist(), scores, strict=True)
            ]
    truth_boxes = [(1, CARS), (2, BUSES)]
    results += [{"image_id": i, "category_id": k, "bbox": box, "score": 0.2 + 0.01 * k}
                for k, boxes in truth_boxes for i, box in boxes]  # fmt: skip
    found = score(results, flags, tmp_path / "many")
    truth = COCO(str(path))  # the oracle: pycocotools on the same files
    run = COCOeval(truth, truth.loadRes(results), "bbox")
    run.evaluate(), run.accumulate(), run.summarize()
    assert run.stats[0] > 0
    for key, value in zip(("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"),
                          run.stats, strict=False):  # fmt: skip
        expected = value if value >= 0 else None  # COCO's -1 (no large object) is null
        assert found["coco"][key] == pytest.approx(expected, abs=1e-12), key


def test_results_entries_are_checked_each_in_one_line(scene, tmp_path, capsys):
    _, flags = scene
    good = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 30], "score": 0.9}
    # An id written as 1.0 is id 1.
    one = score([{**good, "image_id": 1.0, "category_id": 1.0}], flags, tmp_path / "a")
    assert same(one["coco"], score([good], flags, tmp_path / "b")["coco"])
    cases = [
        ({"image_id": True}, "ids are whole numbers or strings, not True"),
        ({"category_id": 1.5}, "ids are whole numbers or strings, not 1.5"),
        ({"bbox": [10, 10, -5, 30]}, "a bbox of negative width or height"),
        ({"bbox": [1e308, 10, 1e308, 30]}, "a bbox whose far corner is not a finite number"),
        ({"bbox": [10, 10, 40]}, "a bbox that is not 4 finite numbers"),
        ({"score": "0.9"}, "a score that is not a finite number"),
    ]
    bad = tmp_path / "bad.json"
    for change, message in cases:
        bad.write_text(json.dumps([good, {**good, **change}]))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy's overflow warnings included
            assert main(["test", "--dets", str(bad), *flags, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert f"--dets {bad}: entry 1 is not" in err and message in err, err
        assert len(err.strip().splitlines()) == 1, err
    bad.write_text("[" * 200000 + "]" * 200000)
    assert main(["test", "--dets", str(bad), *flags, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "not a readable COCO results file (arrays or objects nested too deeply" in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_voc_dataset_and_its_coco_twin_number_images_alike(tmp_path):
    root = tmp_path / "synth"
    main(["synth", str(root), "--images", "8", "--classes", "car", "bus", "--size", "128x96",
          "--seed", "2", "--test-fraction", "0.4", "--coco"])  # fmt: skip
    voc = open_dataset(str(root))
    coco_flags = ["--coco", str(root / "coco" / "instances_{split}.json"), "--images",
                  str(root / "JPEGImages")]  # fmt: skip
    coco = open_dataset(None, coco_flags[1], coco_flags[3])
    ids = voc.ids("test")
    a = ground_truth(voc, "test", ids, ["car", "bus"])
    b = ground_truth(coco, "test", ids, ["car", "bus"])
    assert a.images == b.images == [int(i) for i in ids]
    # Each object found a pixel off, so that the numbers are not all 1.
    detections = {}
    for k, cls in enumerate(["car", "bus"], start=1):
        found = [(n, o.box) for n, i in enumerate(ids) for o in voc.annotation(i).objects
                 if o.name == cls]  # fmt: skip
        boxes = np.array([b for _, b in found], float).reshape(-1, 4) + [1, 0, 1, 0]
        detections[k] = (np.array([n for n, _ in found]), np.linspace(1, 0.5, len(found)), boxes)
    results = results_of(detections, a)
    assert results == results_of(detections, b)
    on = ["--split", "test", "--classes", "car", "bus"]
    from_voc = score(results, ["--voc-root", str(root), *on], tmp_path / "voc")
    from_coco = score(results, [*coco_flags, *on], tmp_path / "coco")
    assert from_voc["coco"] == from_coco["coco"] and from_voc["coco"]["AP50"] > 0
    # On a VOC dataset its names name the images too (results files with string ids).
    named = [{**r, "image_id": ids[a.images.index(r["image_id"])]} for r in results]
    assert (
        score(named, ["--voc-root", str(root), *on], tmp_path / "named")["coco"] == from_voc["coco"]
    )
    # Names that are not all plain numbers stay names (Python's int() reads "2008_000001").
    assert coco_image_ids(["000001", "000012"]) == [1, 12]
    assert coco_image_ids(["2008_000001", "000002"]) == ["2008_000001", "000002"]
    assert coco_image_ids(["1", "01"]) == ["1", "01"]  # the same number
