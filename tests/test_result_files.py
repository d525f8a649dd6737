"""The devkit's result files: written, read back, and scored by `rcnn test --dets`."""

import json

import numpy as np

from rcnn.cli import main
from rcnn.data.voc import VOCDataset, read_id_file
from rcnn.evaluation.result_files import read_results, write_results


def test_result_files_are_1_based_inclusive_and_round_trip(tmp_path):
    boxes = np.array([[0, 0, 10, 10], [4.5, 2, 30, 20.25]], np.float32)
    detections = {1: (np.array([0, 1]), np.array([0.9, 0.25]), boxes)}
    write_results(tmp_path, "test", ["car"], detections, ["000001", "000002"])
    lines = (tmp_path / "comp4_det_test_car.txt").read_text().splitlines()
    assert lines[0] == "000001 0.9 1.0 1.0 10.0 10.0"
    names, scores, back = read_results(tmp_path / "comp4_det_test_car.txt")
    assert names == ["000001", "000002"] and scores.tolist() == [0.9, 0.25]
    assert np.allclose(back, boxes, atol=0.05)


def test_close_scores_keep_their_order_in_result_files(tmp_path):
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9999996, 0.9999999], np.float32)
    write_results(tmp_path, "test", ["car"], {1: (np.array([0, 1]), scores, boxes)}, ["a", "b"])
    _, back, _ = read_results(tmp_path / "comp4_det_test_car.txt")
    assert back[1] > back[0]


def test_scored_result_files_must_be_finite_unambiguous_and_of_the_split(trained, tmp_path, capsys):
    voc = str(trained / "voc")
    ids = read_id_file(VOCDataset(voc).split_path("test"))
    dets = tmp_path / "dets"
    dets.mkdir()
    good = f"{ids[0]} 0.9 10 10 50 50\n"
    cases = [
        ({"comp4_det_test_car.txt": f"{ids[0]} nan 10 10 50 50\n"}, [], "not a finite number"),
        ({"comp4_det_test_car.txt": f"{ids[0]} 0.5 nan 10 50 50\n"}, [], "not a finite number"),
        ({"comp4_det_test_car.txt": b"\xff\xfe\x00bad"}, [], "not a text result file"),
        ({"comp4_det_test_car.txt": good, "comp3_det_test_car.txt": good}, [],
         "--competition comp3"),
        ({"comp4_det_test_car.txt": "notanimage 0.9 10 10 50 50\n"}, [], "another dataset"),
        ({"comp4_det_test_bus.txt": good}, ["--classes", "bus"],
         "no (non-difficult) object of ['bus']"),
        # Python's float() reads 0.5_5 as 0.55; no other reader of these files does.
        ({"comp4_det_test_car.txt": good + f"{ids[0]} 0.5_5 10 10 50 50\n"}, [],
         f"{dets / 'comp4_det_test_car.txt'}:2: expected 'image_id score xmin ymin xmax ymax' "
         "('0.5_5' is not a number)"),
        ({"comp4_det_test_car.txt": f"{ids[0]} 0.5 1_0 10 50 50\n"}, [], "'1_0' is not a number"),
    ]  # fmt: skip
    for files, extra, message in cases:
        for old in dets.iterdir():
            old.unlink()
        for name, text in files.items():
            (dets / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        argv = ["test", "--dets", str(dets), "--voc-root", voc, "--out", str(tmp_path / "o"),
                *extra]  # fmt: skip
        assert main(argv) == 2, files
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (files, err)
    # Choosing the competition reads its files alone.
    (dets / "comp4_det_test_car.txt").write_text(good)
    (dets / "comp3_det_test_car.txt").write_text(good)
    argv = ["test", "--dets", str(dets), "--voc-root", voc, "--out", str(tmp_path / "o"),
            "--competition", "comp4"]  # fmt: skip
    assert main(argv) == 0


def test_metrics_read_back_list_the_classes_in_training_order():
    """metrics.json is written with sorted keys; a finished run's tables read back in the
    order a fresh run prints them."""
    from rcnn.detection.image_results import in_class_order

    read = {"classes": {"bus": 1, "car": 2}, "coco": {"classes": {"bus": 3, "car": 4}},
            "false_positives": {"bus": 5, "car": 6}, "map": 0.5}  # fmt: skip
    found = in_class_order(read, ["car", "bus"])
    assert list(found["classes"]) == list(found["coco"]["classes"]) == ["car", "bus"]
    assert list(found["false_positives"]) == ["car", "bus"] and found["classes"]["car"] == 2


def test_a_folder_missing_a_class_file_is_refused_naming_it(make_voc, tmp_path, capsys):
    voc = make_voc(
        [("000001", "test", [("car", (10, 10, 50, 40), False), ("dog", (60, 10, 90, 60), False)])],
        class_files=("car", "dog"),
    )
    dets = tmp_path / "dets"
    dets.mkdir()
    (dets / "comp4_det_test_car.txt").write_text("000001 0.9 11 11 50 40\n")
    argv = ["test", "--dets", str(dets), "--voc-root", str(voc), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no result file for ['dog']" in err and str(dets / "comp4_det_test_dog.txt") in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o" / "metrics.json").exists()
    # Chosen classes are scored alone; an empty file is a class found nowhere: AP 0.
    assert main([*argv, "--classes", "car"]) == 0
    (dets / "comp4_det_test_dog.txt").write_text("")
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert (
        metrics["classes"]["dog"]["ap"] == 0
        and metrics["map"] == metrics["classes"]["car"]["ap"] / 2
    )
    # A devkit file given as --dets is named as a file, not as a missing folder.
    assert main([*argv[:2], str(dets / "comp4_det_test_car.txt"), *argv[3:]]) == 2
    err = capsys.readouterr().err
    assert "is a file: give the folder of the devkit result files" in err, err
