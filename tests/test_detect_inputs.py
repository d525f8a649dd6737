"""`rcnn detect` and `rcnn test` on the inputs a user may hand them: legal names of any length,
FIFOs, images over the pixel limit, images that change while they run or cannot be drawn. One
image it cannot handle is skipped and named; the run goes on."""

import json
import os
import shutil

import cv2
import numpy as np
from PIL import Image

from rcnn.cli import main
from rcnn.data.proposals import ProposalResult
from rcnn.data.voc import VOCDataset, read_id_file
from rcnn.detection.config import DetectorConfig
from rcnn.detection.detect import picture_names
from rcnn.detection.detector import Detector
from rcnn.modeling.checkpoint import load_model
from rcnn.runtime.config import InferenceConfig
from tests.helpers import png_declaring

FLAGS = ["--device", "cpu", "--workers", "1", "--no-progress"]
# With ".jpg" or ".npz", 250 bytes: a legal name, whose temporary files were too long.
LONG = "c" * 246


def test_detect_skips_what_it_cannot_handle_and_goes_on(trained, tmp_path, caplog, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "bomb.png").write_bytes(png_declaring(30000, 30000))  # 2.7 GB once decoded
    wide = np.full((64, 65_501, 3), 90, np.uint8)  # one pixel wider than a JPEG can be
    wide[10:50, 100:30_000] = (40, 200, 240)
    cv2.imwrite(str(images / "wide.png"), wide)
    shutil.copy(trained / "voc" / "JPEGImages" / "000002.jpg", images / f"{LONG}.jpg")
    no_suffix = images / ("d" * 255)  # the longest legal name: its picture's must be cut
    shutil.copy(trained / "voc" / "JPEGImages" / "000003.jpg", no_suffix)
    os.mkfifo(tmp_path / "pipe.jpg")
    out = tmp_path / "out"
    argv = ["detect", str(trained / "run"), str(images), str(no_suffix), "--out", str(out),
            "--cache-dir", str(trained / "cache"), *FLAGS]  # fmt: skip
    assert main(argv) == 0
    assert "2 images (2 skipped)" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [r["picture"] for r in records] == [f"{LONG}.jpg", "d" * 251 + ".jpg"]
    assert all(cv2.imread(str(out / r["picture"])).shape == (192, 256, 3) for r in records)
    assert "bomb.png: 30000x30000 pixels, more than the limit of 89,478,485" in caplog.text
    assert "wide.png: 65501x64 pixels, too large a side for a JPEG picture" in caplog.text
    argv = ["detect", str(trained / "run"), str(tmp_path / "pipe.jpg"), "--out",
            str(tmp_path / "fifo"), *FLAGS]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pipe.jpg: not a regular file" in err and "missing" not in err


def test_picture_names_fit_a_file_system_whatever_the_images_are_called():
    stem = "\u00e9" * 125  # 250 bytes: with ".png" a legal name, with ".jpg" too, not "-2.jpg"
    names = picture_names([f"a/{stem}.png", f"b/{stem}.png", "c/x.png", "d/X.tif"])
    assert names == [f"{stem}.jpg", "\u00e9" * 124 + "-2.jpg", "x.jpg", "X-2.jpg"]
    assert all(len(name.encode("utf-8")) <= 255 for name in names)


def test_an_image_changed_since_its_proposals_costs_only_itself(trained, tmp_path):
    config = DetectorConfig(inference=InferenceConfig(device="cpu"), workers=1)
    detector = Detector(load_model(trained / "run"), config)
    boxes = np.array([[0, 0, 40, 40], [10, 10, 90, 70], [100, 50, 250, 180]], np.int32)
    good = ProposalResult(str(trained / "voc" / "JPEGImages" / "000001.jpg"), boxes, (256, 192))
    os.mkfifo(tmp_path / "pipe.jpg")  # an image when its proposals were computed
    gone = ProposalResult(str(tmp_path / "pipe.jpg"), boxes, (256, 192))
    (bad, nothing), (same, found) = detector._detect([gone, good])
    assert nothing is None and "pipe.jpg: cannot read image (not a regular file)" in bad.error
    assert same == good
    ((_, alone),) = detector._detect([good])
    for name, dets in alone.items():
        np.testing.assert_array_equal(found[name].boxes, dets.boxes)
        np.testing.assert_array_equal(found[name].scores, dets.scores)


def test_rcnn_test_on_long_names_fifos_and_images_over_the_limit(trained, tmp_path, capsys):
    voc = tmp_path / "voc"
    shutil.copytree(trained / "voc", voc)
    ids = read_id_file(VOCDataset(voc).split_path("test"))[:3]
    for sub, suffix in (("JPEGImages", ".jpg"), ("Annotations", ".xml")):
        (voc / sub / f"{ids[0]}{suffix}").rename(voc / sub / f"{LONG}{suffix}")
    (voc / "JPEGImages" / f"{ids[1]}.jpg").write_bytes(png_declaring(30000, 30000))
    split = [LONG, *ids[1:]]
    (voc / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in split))
    out = tmp_path / "test"
    argv = ["test", str(trained / "run"), "--voc-root", str(voc), "--out", str(out),
            "--cache-dir", str(trained / "cache"), *FLAGS]  # fmt: skip
    assert main(argv) == 0
    (skipped,) = json.loads((out / "metrics.json").read_text())["skipped"]
    assert f"{ids[1]}.jpg: 30000x30000 pixels, more than the limit of 89,478,485" in skipped
    assert (out / "detections" / f"{LONG}.npz").is_file()
    assert f"{LONG} " in (out / "comp4_det_test_car.txt").read_text()
    capsys.readouterr()
    (voc / "JPEGImages" / f"{ids[2]}.jpg").unlink()
    os.mkfifo(voc / "JPEGImages" / f"{ids[2]}.jpg")
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "test.txt names 1 image(s) that are not regular files, e.g. " in err
    assert err.endswith(f"{ids[2]}.jpg") and "missing" not in err


def test_detect_replaces_no_file_it_did_not_write_and_takes_gifs(trained, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    source = trained / "voc" / "JPEGImages" / "000001.jpg"
    shutil.copy(source, images / "000001.jpg")
    Image.open(source).save(images / "moving.gif")  # a GIF: taken, not passed over in silence
    dataset = tmp_path / "JPEGImages"  # another dataset's images, of the same names
    dataset.mkdir()
    shutil.copy(trained / "voc" / "JPEGImages" / "000002.jpg", dataset / "000001.jpg")
    before = (dataset / "000001.jpg").read_bytes()
    argv = ["detect", str(trained / "run"), str(images), "--out", str(dataset), "--cache-dir",
            str(trained / "cache"), *FLAGS]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out {dataset} already holds 000001.jpg, which rcnn detect did not write" in err
    assert (dataset / "000001.jpg").read_bytes() == before
    assert sorted(p.name for p in dataset.iterdir()) == ["000001.jpg"]  # no work was done
    assert main([*argv, "--overwrite"]) == 0  # asked for
    records = [json.loads(line) for line in (dataset / "detections.jsonl").read_text().splitlines()]
    assert [r["picture"] for r in records] == ["000001.jpg", "moving.jpg"]
    assert (dataset / "000001.jpg").read_bytes() != before
