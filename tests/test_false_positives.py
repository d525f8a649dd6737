"""The paper's false-positive analysis on hand-built scenes, by hand-counted kinds."""

import json

import numpy as np
import pytest

from rcnn.cli import main
from rcnn.evaluation.false_positives import (
    analyze_false_positives,
    format_analysis,
    similar_classes,
)
from rcnn.evaluation.voc_eval import ClassTruth, ImageTruth

CLASSES = ["car", "bus", "person"]


def truth_of(per_image: dict[str, dict[str, list]], ids: list[str]) -> dict[str, ClassTruth]:
    out = {}
    for cls in CLASSES:
        images = {}
        for image_id, objects in per_image.items():
            boxes = np.array(objects.get(cls, []), float).reshape(-1, 4)
            images[image_id] = ImageTruth(boxes, np.zeros(len(boxes), bool))
        out[cls] = ClassTruth.of(ids, images)
    return out


def test_each_false_positive_gets_the_first_kind_that_fits():
    ids = ["a", "b"]
    truth = truth_of(
        {
            "a": {"car": [[0, 0, 10, 10]], "bus": [[20, 20, 40, 40]], "person": [[50, 50, 60, 60]]},
            "b": {"car": [[0, 0, 20, 20]]},
        },
        ids,
    )
    car = np.array(
        [
            [0, 0, 10, 10],  # a: the car (true positive)
            [0, 0, 10, 10],  # a: the same car again: a duplicate -> loc
            [5, 0, 15, 10],  # a: IoU 1/3 with the car -> loc
            [20, 20, 40, 40],  # a: on the bus, a similar class (vehicles) -> sim
            [50, 50, 60, 60],  # a: on the person, another class -> oth
            [80, 80, 90, 90],  # a: nothing there -> bg
            [0, 0, 20, 20],  # b: the car (true positive)
            [30, 30, 39, 39],  # b: IoU 0.09 < 0.1 with nothing -> bg
        ],
        float,
    )
    scores = np.array([0.99, 0.9, 0.8, 0.7, 0.6, 0.5, 0.95, 0.4])
    images = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)))
    detections = {1: (images, scores, car), 2: empty, 3: empty}
    found = analyze_false_positives(detections, truth, CLASSES, top=10)
    assert found["car"] == {"top": 6, "loc": 2, "sim": 1, "oth": 1, "bg": 2}
    assert found["bus"] == {"top": 0, "loc": 0, "sim": 0, "oth": 0, "bg": 0}
    # The paper's count: as many false positives as the class has objects (2 cars), in score
    # order: the duplicate (0.9) and the shifted box (0.8).
    paper = analyze_false_positives(detections, truth, CLASSES)
    assert paper["car"] == {"top": 2, "loc": 2, "sim": 0, "oth": 0, "bg": 0}
    assert "car" in format_analysis(found) and "background" in format_analysis(found)


def test_similar_classes_are_the_voc_groups():
    assert similar_classes("car") == {"aeroplane", "bicycle", "boat", "bus", "motorbike", "train"}
    assert "dog" in similar_classes("cat") and similar_classes("person") == set()


def test_rcnn_test_analyze_writes_numbers_and_bars(make_voc, tmp_path, capsys):
    specs = [
        ("000001", "test", [("car", (10, 10, 50, 40), False), ("dog", (60, 10, 90, 60), False)]),
        ("000002", "test", [("car", (40, 20, 90, 60), False)]),
    ]
    voc = make_voc(specs, class_files=("car", "dog"))
    dets = tmp_path / "dets"
    dets.mkdir()
    # 1-based inclusive pixels in result files: the box (x1, y1, x2, y2) is x1+1 y1+1 x2 y2.
    lines = [
        "000001 0.9 11 11 50 40",  # the car
        "000001 0.8 61 11 90 60",  # on the dog: another class among those evaluated
        "000002 0.7 1 1 20 20",  # background
    ]
    (dets / "comp4_det_test_car.txt").write_text("\n".join(lines) + "\n")
    (dets / "comp4_det_test_dog.txt").write_text("000002 0.5 41 21 90 60\n")  # on the car
    out = tmp_path / "out"
    argv = ["test", "--dets", str(dets), "--voc-root", str(voc), "--out", str(out), "--analyze"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["false_positives"]["car"] == {"top": 2, "loc": 0, "sim": 0, "oth": 1, "bg": 1}
    assert metrics["false_positives"]["dog"] == {"top": 1, "loc": 0, "sim": 0, "oth": 1, "bg": 0}
    assert (out / "false_positives.png").stat().st_size > 0
    assert "top false positives" in capsys.readouterr().out


@pytest.mark.parametrize("flag", [[], ["--analyze"]])
def test_without_analyze_there_is_no_figure(make_voc, tmp_path, flag):
    voc = make_voc([("000001", "test", [("car", (10, 10, 50, 40), False)])])
    dets = tmp_path / "dets"
    dets.mkdir()
    (dets / "comp4_det_test_car.txt").write_text("000001 0.9 11 11 50 40\n")
    out = tmp_path / "out"
    argv = ["test", "--dets", str(dets), "--voc-root", str(voc), "--out", str(out), *flag]
    assert main(argv) == 0
    assert (out / "false_positives.png").exists() == bool(flag)
