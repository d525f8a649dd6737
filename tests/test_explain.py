"""`rcnn explain` and `Detector.explain`: one image's trip through the detector, whose numbers
are the detector's own (its detections, `rcnn prepare`'s labels, the warp of training)."""

import json

import numpy as np
import pytest

from rcnn import Detector
from rcnn.cli import main
from tests.helpers import copy_run

FLAGS = ["--device", "cpu", "--no-amp", "--workers", "1"]


def image_of(trained, split="test", n=0):
    image_id = (trained / "voc" / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[n]
    voc = trained / "voc"
    return str(voc / "JPEGImages" / f"{image_id}.jpg"), str(voc / "Annotations" / f"{image_id}.xml")


@pytest.fixture(scope="module")
def heads(trained, tmp_path_factory):
    """A copy of the trained run with fc7 SVMs and box regressors (on paper-preset regions)."""
    from rcnn.data.config import PrepareConfig, ProposalConfig
    from rcnn.data.labels import PRESETS
    from rcnn.data.prepare import run_prepare
    from rcnn.heads.config import BBoxConfig, HeadConfig, SVMConfig
    from rcnn.heads.train import run_train_bbox, run_train_svm
    from rcnn.runtime.config import InferenceConfig

    root = tmp_path_factory.mktemp("explain")
    run = copy_run(trained / "run", root / "run")
    run_prepare(PrepareConfig(str(trained / "voc"), str(root / "regions"), splits=["train"],
                              labels=PRESETS["paper"], proposals=ProposalConfig("fast"),
                              cache_dir=str(trained / "cache"), workers=1,
                              progress=False))  # fmt: skip
    cfg = HeadConfig(str(run), str(root / "regions"), inference=InferenceConfig(device="cpu"),
                     progress=False)  # fmt: skip
    run_train_svm(cfg, SVMConfig())
    run_train_bbox(cfg, BBoxConfig())
    return run


def test_kept_boxes_are_the_detectors_output(trained, heads, tmp_path, capsys):
    from torchvision.ops import box_iou

    path, xml = image_of(trained)
    out = tmp_path / "explained"
    argv = ["explain", str(heads), path, "--annotation", xml, "--scorer", "svm", "--bbox-reg",
            str(heads / "bbox"), "--out", str(out), "--cache-dir", str(trained / "cache"),
            "--score-thresh", "-0.5", *FLAGS]  # fmt: skip
    assert main(argv) == 0
    assert "kept by NMS" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["explain.json", "explain.md", "explain.png"]
    record = json.loads((out / "explain.json").read_text())
    det = Detector.load(heads, scorer="svm", bbox_reg=True, score_thresh=-0.5, device="cpu",
                        amp=False, workers=1, cache_dir=trained / "cache")  # fmt: skip
    result = det(path)
    assert len(result) == len(record["detections"]) > 0
    np.testing.assert_array_equal(result.boxes, [d["box"] for d in record["detections"]])
    assert result.scores.tolist() == [d["score"] for d in record["detections"]]
    assert result.names == [d["class"] for d in record["detections"]]
    ex = det.explain(path, xml)
    np.testing.assert_array_equal(ex.detections.boxes, result.boxes)
    np.testing.assert_array_equal(ex.detections.labels, result.labels)
    # Each detection is its proposal moved by its class's regressor, scored for its class.
    np.testing.assert_array_equal(ex.before, ex.proposals[ex.kept_rows])
    np.testing.assert_array_equal(ex.after, ex.moved[ex.kept_rows, ex.kept_labels - 1])
    np.testing.assert_array_equal(result.scores, ex.scores[ex.kept_rows, ex.kept_labels - 1])
    assert ex.candidates == int((ex.scores >= -0.5).sum()) >= len(result)
    # The recall against torchvision's IoU of the objects and the proposals.
    import torch

    iou = box_iou(torch.tensor(ex.truth.regions.gt_boxes, dtype=torch.float64),
                  torch.tensor(ex.proposals, dtype=torch.float64)).max(dim=1).values  # fmt: skip
    assert ex.truth.recall(0.7) == pytest.approx(float((iou >= 0.7).double().mean()))
    assert record["recall"]["0.5"] == pytest.approx(float((iou >= 0.5).double().mean()))
    text = (out / "explain.md").read_text()
    assert f"Selective Search made {len(ex.proposals)} proposals" in text
    assert f"{len(result)} detections are kept" in text and "## (f) Box regression" in text
    # The same again from an array: the same numbers (deterministic).
    import cv2

    again = det.explain(cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB), xml)
    np.testing.assert_array_equal(again.scores, ex.scores)
    np.testing.assert_array_equal(again.warped, ex.warped)


def test_labels_are_rcnn_prepares_and_warps_are_trainings(trained):
    from rcnn.data.regions import RegionSet
    from rcnn.data.warps import mean_fill, warp_region

    store = RegionSet.load(trained / "regions" / "train")
    path, xml = image_of(trained, "train", 1)
    index = [str(p) for p in store.image_paths].index(str(type(trained)(path).resolve()))
    mine = store.image_index == index
    det = Detector.load(trained / "run", device="cpu", amp=False, workers=1,
                        cache_dir=trained / "cache")  # fmt: skip
    ex = det.explain(path, xml)
    regions = ex.truth.regions
    np.testing.assert_array_equal(regions.boxes, store.boxes[mine])
    np.testing.assert_array_equal(regions.labels, store.labels[mine])
    np.testing.assert_array_equal(regions.ious, store.ious[mine])
    assert ex.truth.rules.source == str(trained / "regions" / "summary.json")
    assert np.count_nonzero(ex.truth.status >= 0) == mine.sum()  # no ground truth added
    assert np.count_nonzero(ex.truth.status == 1) == np.count_nonzero(store.labels[mine])
    # The warped regions are the training warp's, within the rounding of normalization.
    assert len(ex.warped) > 0 and (ex.truth.status[ex.warped_rows] >= 0).all()
    size, pad = ex.warp["size"], ex.warp["pad"]
    for crop, row in zip(ex.warped, ex.warped_rows, strict=True):
        expected = warp_region(ex.image, ex.proposals[row], size, pad, mean_fill(ex.warp["mean"]))
        assert np.abs(crop.astype(int) - expected).max() <= 1


def test_bad_inputs_are_one_line_errors(trained, tmp_path, capsys):
    path, xml = image_of(trained)
    other_path, other_xml = image_of(trained, "test", 1)
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><object>")
    out = tmp_path / "out"
    base = ["explain", str(trained / "run"), "--cache-dir", str(trained / "cache"), *FLAGS]
    cases = [
        ([str(tmp_path / "nothing.jpg"), "--out", str(out)], "nothing.jpg"),
        ([path, "--annotation", other_xml, "--out", str(out)], "annotation of this image"),
        ([path, "--annotation", str(broken), "--out", str(out)], "malformed XML"),
        ([path, "--annotation", str(tmp_path / "no.xml"), "--out", str(out)], "no.xml"),
        ([path, "--scorer", "svm", "--out", str(out)], "svm"),
    ]
    for args, words in cases:
        assert main([*base[:2], args[0], *base[2:], *args[1:]]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("rcnn explain: error:") and "\n" not in err, err
        assert words in err, err
        assert not out.exists(), "nothing is written for a failed run"
    out.mkdir()
    (out / "explain.md").write_text("earlier")
    assert main([*base[:2], path, *base[2:], "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and "\n" not in err
    assert (out / "explain.md").read_text() == "earlier"
    assert main([*base[:2], path, *base[2:], "--out", str(out), "--overwrite"]) == 0
    assert "earlier" not in (out / "explain.md").read_text()
    assert not list(tmp_path.glob(".out-*")), "the staging folders are gone"


def test_a_phone_photo_is_explained_upright_as_rcnn_detect_sees_it(trained, tmp_path, capsys):
    import cv2
    from PIL import Image

    stored = cv2.imread(image_of(trained)[0])[:, :, ::-1]
    exif = Image.Exif()
    exif[0x0112] = 6  # shown a quarter turn clockwise
    phone = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(phone, quality=95, exif=exif.tobytes())
    load = dict(score_thresh=0.05, device="cpu", amp=False, workers=1, cache_dir=trained / "cache")
    det = Detector.load(trained / "run", **load)
    expected = det(phone)  # upright, as rcnn detect reads it
    assert len(expected) > 0
    stored_frame = Detector.load(trained / "run", exif=False, **load)(phone)
    base = ["explain", str(trained / "run"), str(phone), "--score-thresh", "0.05", "--cache-dir",
            str(trained / "cache"), *FLAGS]  # fmt: skip
    for flags, frame in (([], expected), (["--no-exif"], stored_frame)):
        out = tmp_path / f"out{len(flags)}"
        assert main([*base, *flags, "--out", str(out)]) == 0
        record = json.loads((out / "explain.json").read_text())
        np.testing.assert_array_equal(frame.boxes, [d["box"] for d in record["detections"]])
    ex = det.explain(phone)
    np.testing.assert_array_equal(ex.detections.boxes, expected.boxes)
    assert ex.image.shape[:2] == stored.shape[1::-1]  # upright: turned
    # An exported graph has no stages to show: said at once, naming the file.
    fake = tmp_path / "detector.onnx"
    fake.write_bytes(b"")
    assert main(["explain", str(fake), str(phone), "--out", str(tmp_path / "x"), *FLAGS]) == 2
    err = capsys.readouterr().err.strip()
    assert "detector.onnx" in err and "exported" in err and "\n" not in err
