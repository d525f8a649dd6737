"""The Python API: `from rcnn import Detector` gives what `rcnn detect` gives; the readers and
the evaluation of result files; no torch until a detector is loaded."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

import rcnn
from rcnn import Detector, RcnnError
from rcnn.cli import main

FLAGS = ["--device", "cpu", "--no-amp", "--score-thresh", "0.05", "--workers", "1"]


@pytest.fixture(scope="module")
def detected(trained, tmp_path_factory):
    """`rcnn detect` on three test images."""
    out = tmp_path_factory.mktemp("api") / "pictures"
    ids = (trained / "voc" / "ImageSets" / "Main" / "test.txt").read_text().split()[:3]
    paths = [str(trained / "voc" / "JPEGImages" / f"{i}.jpg") for i in ids]
    argv = ["detect", str(trained / "run"), *paths, "--out", str(out), "--cache-dir",
            str(trained / "cache"), "--no-progress", *FLAGS]  # fmt: skip
    assert main(argv) == 0
    lines = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    return paths, lines


def load(trained):
    return Detector.load(trained / "run", device="cpu", amp=False, score_thresh=0.05, workers=1,
                         cache_dir=trained / "cache")  # fmt: skip


def same(result, line) -> None:
    found = line["detections"]
    assert len(result) == len(found) > 0
    np.testing.assert_array_equal(np.round(result.boxes.astype(float), 2),
                                  [d["box"] for d in found])  # fmt: skip
    assert result.scores.tolist() == [d["score"] for d in found]
    assert result.names == [d["class"] for d in found]
    assert result.size == (line["width"], line["height"])


def test_the_detector_gives_what_rcnn_detect_gives(trained, detected):
    paths, lines = detected
    det = load(trained)
    for path, line in zip(paths, lines, strict=True):
        result = det(path)
        same(result, line)
        assert result.path == path
    for result, line in zip(det.detect_many(paths, batch_images=2), lines, strict=True):
        same(result, line)


def test_an_array_or_a_pil_image_gives_the_same_detections(trained, detected):
    paths, lines = detected
    det = load(trained)
    rgb = cv2.cvtColor(cv2.imread(paths[0]), cv2.COLOR_BGR2RGB)
    same(det(rgb), lines[0])
    same(det(Image.open(paths[0])), lines[0])
    assert det(rgb).path is None


def test_bad_images_raise_the_projects_error(trained, tmp_path):
    det = load(trained)
    with pytest.raises(RcnnError, match="uint8"):
        det(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(RcnnError, match="a path, a numpy array or a PIL image"):
        det([1, 2, 3])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(RcnnError, match="broken.jpg"):
        det(broken)
    for one in (str(broken), broken, np.zeros((10, 10, 3), np.uint8)):  # not a list of them
        with pytest.raises(RcnnError, match="detect_many takes a list"):
            next(det.detect_many(one))
    with pytest.raises(FileNotFoundError, match="model not found"):
        Detector.load(tmp_path / "nothing")
    with pytest.raises(RcnnError, match="--nms"):
        Detector.load(trained / "run", nms=0)
    with pytest.raises(RcnnError, match="is read only with --scorer svm"):
        Detector.load(trained / "run", svm=trained / "run")


def test_import_rcnn_leaves_torch_alone():
    code = ("import sys, rcnn; rcnn.Detector; rcnn.open_dataset; rcnn.evaluate_detections; "
            "print('torch' in sys.modules, 'cv2' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
    assert sorted(rcnn.__all__) == sorted(
        ["Detector", "Result", "RcnnError", "evaluate_detections", "open_dataset"]
    )


def test_another_detectors_files_are_scored_as_rcnn_test_scores_them(trained, tmp_path):
    voc = trained / "voc"
    argv = ["test", str(trained / "run"), "--voc-root", str(voc), "--out", str(tmp_path / "t"),
            "--cache-dir", str(trained / "cache"), "--device", "cpu", "--no-amp",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    own = json.loads((tmp_path / "t" / "metrics.json").read_text())
    found = rcnn.evaluate_detections(tmp_path / "t", voc_root=voc, split="test",
                                     out=tmp_path / "again")  # fmt: skip
    assert found["map_07"] == own["map_07"] and found["map"] == own["map"]
    assert found["coco"]["AP"] == own["coco"]["AP"]
    dataset = rcnn.open_dataset(voc_root=voc)
    ids = dataset.ids("test")
    assert len(ids) == found["images"]
    assert {o.name for i in ids for o in dataset.annotation(i).objects} <= {"car"}
    with pytest.raises(RcnnError, match="--split"):
        rcnn.evaluate_detections(tmp_path / "t", voc_root=voc, split="../x")
