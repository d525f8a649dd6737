"""The detection metrics of a split, from detections and its ground truth."""

import numpy as np


def test_a_class_missing_from_the_split_is_left_out_of_the_mean():
    from rcnn.evaluation.detection_metrics import SplitTruth, evaluate_detections
    from rcnn.evaluation.voc_eval import ClassTruth, ImageTruth

    car = ImageTruth(np.array([[0, 0, 10, 10]], float), np.array([False]))
    classes = {"car": ClassTruth.of(["a"], {"a": car}), "bus": ClassTruth.of(["a"], {})}
    truth = SplitTruth(["a"], classes, {}, {}, set())
    dets = {1: (np.array([0]), np.array([0.9]), np.array([[0, 0, 10, 10]], float)),
            2: (np.array([0]), np.array([0.8]), np.array([[5, 5, 20, 20]], float))}  # fmt: skip
    metrics = evaluate_detections(dets, truth, ["car", "bus"])
    assert metrics["map"] == 1.0 and np.isnan(metrics["classes"]["bus"]["ap"])
