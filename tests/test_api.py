"""The Python API: `from rcnn import Detector` gives what `rcnn detect` gives; the readers and
the evaluation of result files; no torch until a detector is loaded."""

import json
import os
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


def test_pil_images_of_16_bit_or_float_pixels_read_as_their_files(trained, tmp_path):
    det = load(trained)
    path = trained / "voc" / "JPEGImages" / "000001.jpg"
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(tmp_path / "grey16.png"), grey.astype(np.uint16) * 257)
    by_path = det(tmp_path / "grey16.png")
    assert len(by_path) > 0
    for found in (det(Image.open(tmp_path / "grey16.png")), det(grey)):  # 16 bits keep 8
        np.testing.assert_array_equal(found.boxes, by_path.boxes)
        np.testing.assert_array_equal(found.scores, by_path.scores)
    unit = det(Image.fromarray(grey.astype(np.float32) / 255, "F"))
    np.testing.assert_array_equal(unit.boxes, by_path.boxes)
    with pytest.raises(RcnnError, match="float pixels must lie in 0..1"):
        det(Image.fromarray(grey.astype(np.float32), "F"))


def test_what_the_api_cannot_take_is_an_rcnn_error_naming_it(trained, tmp_path):
    det = load(trained)
    assert Detector.load(trained / "run", classes="car", device="cpu").classes == ["car"]
    with pytest.raises(RcnnError, match="model is a run folder.*not None"):
        Detector.load(None)
    (tmp_path / "file").write_text("")
    with pytest.raises(RcnnError, match="cache_dir .*file is a file, not a folder"):
        Detector.load(trained / "run", cache_dir=tmp_path / "file")
    for bad in (2.5, True, "2", 0):
        with pytest.raises(RcnnError, match="batch_images must be a whole number"):
            det.detect_many([], batch_images=bad)
    for bad in (None, 3):
        with pytest.raises(RcnnError, match=f"detect_many takes .* not {type(bad).__name__}"):
            det.detect_many(bad)
    closed = Image.open(trained / "voc" / "JPEGImages" / "000001.jpg")
    closed.close()
    with pytest.raises(RcnnError, match="closed"):
        det(closed)
    (entry,) = (e for e in os.scandir(trained / "voc" / "JPEGImages") if e.name == "000001.jpg")
    assert det(entry).path == entry.path and len(det(entry)) == len(det(entry.path))
    dataset = rcnn.open_dataset(voc_root=trained / "voc")
    for id_ in ("../../etc/passwd", "a/b", ".hidden"):
        with pytest.raises(RcnnError, match="not an image id"):
            dataset.annotation(id_)
        with pytest.raises(RcnnError, match="not an image id"):
            dataset.image_path(id_)


def test_an_image_it_cannot_take_is_raised_after_the_results_before_it(trained, tmp_path):
    det = load(trained)
    good = [str(trained / "voc" / "JPEGImages" / f"00000{i}.jpg") for i in (1, 2)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    for bad, message in ((broken, "broken.jpg: not a readable image"), (5, "not int")):
        found = []
        with pytest.raises(RcnnError, match=message):
            for result in det.detect_many([*good, bad, good[0]], batch_images=8):
                found.append(result.path)
        assert found == good


def test_an_exif_orientation_is_applied_unless_asked_not_to(trained, tmp_path, capsys):
    stored = cv2.imread(str(trained / "voc" / "JPEGImages" / "000001.jpg"))[:, :, ::-1]
    exif = Image.Exif()
    exif[0x0112] = 6  # shown a quarter turn clockwise
    Image.fromarray(stored).save(tmp_path / "phone.jpg", quality=95, exif=exif.tobytes())
    as_stored = cv2.imread(
        str(tmp_path / "phone.jpg"), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    )[..., ::-1]
    turned = np.ascontiguousarray(np.rot90(as_stored, -1))  # the same pixels, upright
    # PIL decodes a JPEG to other pixels than OpenCV: its image is given as a tagged PNG.
    Image.fromarray(as_stored).save(tmp_path / "phone.png", exif=exif.tobytes())
    det = load(trained)
    expected = det(turned)
    assert len(expected) > 0
    for found in (det(tmp_path / "phone.jpg"), det(Image.open(tmp_path / "phone.png"))):
        assert found.size == (192, 256)
        np.testing.assert_array_equal(found.boxes, expected.boxes)
        np.testing.assert_array_equal(found.scores, expected.scores)
    stored_frame = Detector.load(trained / "run", device="cpu", amp=False, score_thresh=0.05,
                                 workers=1, cache_dir=trained / "cache", exif=False)  # fmt: skip
    kept = stored_frame(tmp_path / "phone.jpg")
    np.testing.assert_array_equal(kept.boxes, det(as_stored).boxes)
    out = tmp_path / "out"
    argv = ["detect", str(trained / "run"), str(tmp_path / "phone.jpg"), "--out", str(out),
            "--cache-dir", str(trained / "cache"), "--no-progress", *FLAGS]  # fmt: skip
    assert main(argv) == 0
    (line,) = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    same(det(turned), line)
    assert line["image"] == str((tmp_path / "phone.jpg").resolve())
    assert cv2.imread(str(out / "phone.jpg")).shape == (256, 192, 3)  # drawn upright
    assert main([*argv, "--overwrite", "--no-exif"]) == 0
    (line,) = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    same(det(as_stored), line)


# The README's snippet as a script, without `if __name__ == "__main__":`; several images and a
# cache of their own, so that Selective Search runs in a pool of processes.
SCRIPT = """
import json, sys
from rcnn import Detector
det = Detector.load(sys.argv[1], device="cpu", amp=False, score_thresh=0.05, workers=2,
                    cache_dir=sys.argv[2])
found = [r.boxes.tolist() for r in det.detect_many(sys.argv[3:], batch_images=2)]
print(json.dumps(found))
"""


def test_detect_many_runs_at_the_top_level_of_a_script(trained, tmp_path):
    paths = [str(trained / "voc" / "JPEGImages" / f"00000{i}.jpg") for i in (1, 2, 3)]
    expected = [r.boxes.tolist() for r in load(trained).detect_many(paths, batch_images=2)]
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for n, command in enumerate(([str(script)], ["-c", SCRIPT])):
        args = [str(trained / "run"), str(tmp_path / f"cache{n}"), *paths]
        done = subprocess.run([sys.executable, *command, *args], capture_output=True,
                              text=True, timeout=240, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == expected
        assert len(list((tmp_path / f"cache{n}").rglob("*.npz"))) == len(paths)


def test_detect_many_runs_in_a_jupyter_kernel(trained, tmp_path):
    pytest.importorskip("ipykernel")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    paths = [str(trained / "voc" / "JPEGImages" / f"00000{i}.jpg") for i in (1, 2, 3)]
    expected = [r.boxes.tolist() for r in load(trained).detect_many(paths, batch_images=2)]
    code = "import sys\nsys.argv = ['nb', {!r}, {!r}, *{!r}]\n".format(
        str(trained / "run"), str(tmp_path / "cache"), paths
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code + SCRIPT)])
    nbclient.NotebookClient(notebook, timeout=240, kernel_name="python3").execute()
    (output,) = notebook.cells[0].outputs
    assert json.loads(output["text"]) == expected
