"""The detector, `rcnn detect` and `rcnn test` on a small synthetic VOC set with a trained model."""

import json
import logging
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms, box_iou

from rcnn.cli import main
from rcnn.data.voc import VOCDataset, parse_annotation, read_id_file
from rcnn.detection.config import DetectorConfig, eval_detector_config
from rcnn.detection.detector import Detector, select_detections
from rcnn.detection.testing import TestConfig, run_test
from rcnn.errors import RcnnError
from rcnn.files import output_dir
from rcnn.modeling.checkpoint import load_model
from rcnn.runtime.config import InferenceConfig
from tests.helpers import one_process, same_files, torchrun_steps

FLAGS = ["--device", "cpu", "--workers", "1", "--no-progress"]


CPU = InferenceConfig(device="cpu")


def detector_config(root, **kw):
    kw = {"inference": CPU, "workers": 1, "cache_dir": str(root / "cache"), **kw}
    return DetectorConfig(**kw)


def test_select_detections_is_torchvision_batched_nms():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 80, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (300, 2))], axis=1).astype(np.float32)
    scores = rng.random((300, 3)).astype(np.float32)
    dets = select_detections(boxes, scores, 0.2, 0.3)
    rows, cols = np.nonzero(scores >= 0.2)
    keep = batched_nms(
        torch.from_numpy(boxes[rows]),
        torch.from_numpy(scores[rows, cols]),
        torch.from_numpy(cols),
        0.3,
    ).numpy()
    assert np.array_equal(dets.boxes, boxes[rows][keep])
    assert np.array_equal(dets.labels, cols[keep] + 1)
    assert (np.diff(dets.scores) <= 0).all()
    # Within a class no two kept boxes overlap above the threshold; across classes they may.
    for k in (1, 2, 3):
        mine = torch.from_numpy(dets.boxes[dets.labels == k])
        iou = box_iou(mine, mine).fill_diagonal_(0)
        assert (iou <= 0.3).all()


def test_select_detections_caps_and_threshold():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32)
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.95]], np.float32)
    dets = select_detections(boxes, scores, 0.5, 0.3)
    assert dets.labels.tolist() == [2, 1, 1, 2] and dets.scores[0] == pytest.approx(0.95)
    capped = select_detections(boxes, scores, 0.0, 0.3, max_per_class=1)
    assert sorted(capped.labels.tolist()) == [1, 2]
    assert len(select_detections(boxes, scores, 0.0, 0.3, max_per_image=2)) == 2
    assert len(select_detections(boxes, scores, 0.99, 0.3)) == 0


def test_detect_finds_the_car(trained, tmp_path, capsys):
    voc = VOCDataset(trained / "voc")
    image_id = next(  # the first test image with a clearly visible car
        i
        for i in read_id_file(voc.split_path("test"))
        if parse_annotation(voc.annotation_path(i)).select(["car"], keep_difficult=False)
    )
    cars = [o.box for o in parse_annotation(voc.annotation_path(image_id)).objects]
    argv = ["detect", str(trained / "run"), str(voc.image_path(image_id)), "--out",
            str(tmp_path / "det"), "--score-thresh", "0.5", "--cache-dir", str(trained / "cache"),
            *FLAGS]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((tmp_path / "det" / "detections.jsonl").read_text())
    assert record["width"] == 256 and record["height"] == 192
    best = record["detections"][0]
    assert best["class"] == "car" and best["score"] >= 0.5
    iou = box_iou(torch.tensor([best["box"]]), torch.tensor(cars, dtype=torch.float32))
    assert iou.max() >= 0.5, (best, cars)
    picture = cv2.imread(str(tmp_path / "det" / f"{image_id}.jpg"))
    assert picture.shape == (192, 256, 3)
    assert "1 images" in capsys.readouterr().out


def test_detect_skips_unreadable_images_and_names_them(trained, tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(trained / "voc" / "JPEGImages" / "000002.jpg", folder / "good.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    summary_argv = ["detect", str(trained / "run"), str(folder), "--out", str(tmp_path / "d"),
                    "--cache-dir", str(trained / "cache"), *FLAGS]  # fmt: skip
    assert main(summary_argv) == 0
    lines = (tmp_path / "d" / "detections.jsonl").read_text().splitlines()
    assert [json.loads(x)["image"].endswith("good.jpg") for x in lines] == [True]
    assert "broken.jpg" in caplog.text
    assert main(summary_argv) == 2, "an existing result is not replaced unasked"


def test_rcnn_test_reports_ap_and_resumes_identically(trained, tmp_path, capsys):
    out = tmp_path / "test"
    argv = ["test", str(trained / "run"), "--voc-root", str(trained / "voc"), "--out", str(out),
            "--cache-dir", str(trained / "cache"), *FLAGS]  # fmt: skip
    assert main(argv) == 0
    report = capsys.readouterr().out
    assert "car" in report and "mean" in report and "proposal recall at IoU 0.5" in report
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.3 <= metrics["classes"]["car"]["ap_07"] <= 1, metrics
    first = (out / "comp4_det_test_car.txt").read_bytes()
    # Stopped part-way: only some images' detections exist. The rest are computed again.
    done = sorted((out / "detections").glob("*.npz"))
    kept = {p: p.stat().st_mtime_ns for p in done[: len(done) // 2]}
    for path in done[len(done) // 2 :]:
        path.unlink()
    (out / "comp4_det_test_car.txt").unlink()
    assert main(argv) == 0
    assert (out / "comp4_det_test_car.txt").read_bytes() == first
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "finished images kept"
    # The result files alone give the same numbers.
    assert main(["test", "--dets", str(out), "--voc-root", str(trained / "voc"),
                 "--out", str(tmp_path / "rescored")]) == 0  # fmt: skip
    rescored = json.loads((tmp_path / "rescored" / "metrics.json").read_text())
    for key in ("ap", "ap_07", "ap_07_strict", "recall"):  # the files hold the boxes scored
        assert rescored["classes"]["car"][key] == metrics["classes"]["car"][key], key
    # Other settings on the same folder are refused, then accepted with --overwrite.
    assert main([*argv, "--nms", "0.5"]) == 2
    assert "other settings (nms)" in capsys.readouterr().err
    assert main([*argv, "--nms", "0.5", "--overwrite"]) == 0
    # --overwrite with the same settings detects again rather than keeping the old files.
    before = {p: p.stat().st_mtime_ns for p in (out / "detections").glob("*.npz")}
    assert main([*argv, "--nms", "0.5", "--overwrite"]) == 0
    assert all(p.stat().st_mtime_ns != t for p, t in before.items())


def same(a, b) -> bool:
    """Equal numbers, NaN equal to NaN (COCO's -1: no object of a size)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_rcnn_test_scores_a_coco_file_as_its_voc_twin(trained, tmp_path, capsys):
    """The same scenes as COCO files: the same detections, the same VOC and COCO metrics,
    and the COCO results file scores the same again; results of another dataset refused."""
    coco = ["--coco", str(trained / "voc" / "coco" / "instances_{split}.json"),
            "--images", str(trained / "voc" / "JPEGImages")]  # fmt: skip
    common = ["--cache-dir", str(trained / "cache"), *FLAGS]
    run = str(trained / "run")
    assert main(["test", run, "--voc-root", str(trained / "voc"), "--out", str(tmp_path / "v"),
                 *common]) == 0  # fmt: skip
    assert main(["test", run, *coco, "--out", str(tmp_path / "c"), *common]) == 0
    report = capsys.readouterr().out
    assert "COCO metrics (pycocotools)" in report and "AP@[.5:.95]" in report
    v, c = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in "vc")
    for key in ("classes", "map_07", "map", "map_07_strict", "coco"):
        assert same(v[key], c[key]), key
    assert 0 < c["coco"]["AP50"] <= 1 and c["coco"]["AP"] <= c["coco"]["AP50"]
    results = json.loads((tmp_path / "c" / "coco_results.json").read_text())
    assert {r["image_id"] for r in results} <= {int(i) for i in read_id_file(
        trained / "voc" / "ImageSets" / "Main" / "test.txt")}  # fmt: skip
    # The COCO results file alone gives the same numbers.
    assert main(["test", "--dets", str(tmp_path / "c" / "coco_results.json"), *coco,
                 "--out", str(tmp_path / "again")]) == 0  # fmt: skip
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert same(again["coco"], c["coco"]) and same(again["classes"], c["classes"])
    # The VOC run wrote the same results file (the same image ids), which scores alike.
    assert json.loads((tmp_path / "v" / "coco_results.json").read_text()) == results
    # Results of another split are refused, and entries that are not detections named.
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": [1], "category_id": 1, "bbox": [0, 0, 1, 1],
                                "score": 1}]))  # fmt: skip
    assert main(["test", "--dets", str(bad), *coco, "--out", str(tmp_path / "x")]) == 2
    assert "entry 0 is not {image_id, category_id" in capsys.readouterr().err
    argv = ["test", "--dets", str(tmp_path / "c" / "coco_results.json"), *coco,
            "--split", "val", "--out", str(tmp_path / "x")]  # fmt: skip
    assert main(argv) == 2
    assert "results of another dataset or split?" in capsys.readouterr().err


def test_model_pth_needs_matching_classes(trained, tmp_path):
    pth = trained / "run" / "model.pth"
    with pytest.raises(RcnnError, match="holds only weights: give its run folder"):
        load_model(pth)
    with pytest.raises(RcnnError, match="3 classes"):
        load_model(pth, ["car", "bus", "dog"])
    loaded = load_model(pth, ["car"])
    assert loaded.classes == ["car"] and loaded.spec.input_size == 64  # from config.json
    with pytest.raises(RcnnError, match="trained for"):
        load_model(trained / "run", ["bus"])


def test_bad_inputs_are_named(trained, tmp_path, capsys):
    voc = trained / "voc"
    truncated = tmp_path / "best.pt"
    truncated.write_bytes((trained / "run" / "best.pt").read_bytes()[:5000])
    empty = tmp_path / "empty"
    empty.mkdir()
    test = ["test", "--voc-root", str(voc), "--out", str(tmp_path / "t"), *FLAGS]
    cases = [
        (["detect", str(tmp_path / "nope"), str(voc / "JPEGImages"), "--out", str(tmp_path / "a")],
         "nope: model not found"),
        (["detect", str(truncated), str(voc / "JPEGImages"), "--out", str(tmp_path / "a")],
         "best.pt: not a readable checkpoint"),
        (["detect", str(trained / "run"), str(empty), "--out", str(tmp_path / "a")],
         "no image to detect"),
        (["detect", str(trained / "run"), str(tmp_path / "gone.jpg"), "--out", str(empty)],
         "gone.jpg: no such image file or folder"),
        ([*test[:1], str(trained / "run"), *test[1:], "--classes", "bus"], "trained for"),
        ([*test[:1], str(trained / "run"), *test[1:], "--split", "nosuch"], "nosuch.txt not found"),
        ([*test[:1], str(trained / "run"), *test[1:], "--score-thresh", "2"], "--score-thresh"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    # A split file naming an image that is not there.
    broken = tmp_path / "voc"
    shutil.copytree(voc, broken)
    with (broken / "ImageSets" / "Main" / "test.txt").open("a") as f:
        f.write("999999\n")
    detector = eval_detector_config(inference=CPU, workers=1)
    cfg = TestConfig(str(trained / "run"), str(broken), str(tmp_path / "t2"), detector=detector)
    with pytest.raises(
        RcnnError, match=r"test.txt names 1 image\(s\) that are missing, e\.g\. .*/999999.jpg"
    ):
        run_test(cfg)


def test_scores_come_in_one_pass_per_chunk(trained):
    # Two images scored together give what each gives alone, whatever the batch size.
    detector = Detector(load_model(trained / "run"), detector_config(trained))
    paths = [str(trained / "voc" / "JPEGImages" / f"00000{i}.jpg") for i in (1, 2)]
    boxes = [np.array([[0, 0, 40, 40], [10, 10, 90, 70]]), np.array([[5, 5, 60, 50]])]
    sizes = [(256, 192), (256, 192)]
    together = detector.score(paths, boxes, sizes)
    alone = [detector.score([p], [b], [s])[0] for p, b, s in zip(paths, boxes, sizes, strict=True)]
    for a, b in zip(together, alone, strict=True):  # the same bytes: batches never mix images
        np.testing.assert_array_equal(a, b)


def test_torchrun_shares_images_and_gives_the_same_results(trained, tmp_path):
    from rcnn.files import output_lock

    common = [str(trained / "run"), "--voc-root", str(trained / "voc"),
              "--cache-dir", str(trained / "cache"), *FLAGS]  # fmt: skip
    one_process("test", *common, "--out", str(tmp_path / "one"))
    steps = [{"name": name, "argv": ["test", *common, "--out", str(tmp_path / name)]}
             for name in ("two", "locked")]  # fmt: skip
    # A folder another process is writing: every rank stops with the message, none hangs or
    # ends in a communication traceback.
    with output_lock(output_dir(tmp_path / "locked"), "rcnn test"):
        ranks = torchrun_steps(steps, tmp_path / "launch")
    assert [r["two"]["rc"] for r in ranks] == [0, 0]
    same_files(tmp_path / "one", tmp_path / "two", ["comp4_det_test_car.txt"])
    for rank in ranks:
        err = rank["locked"]["err"]
        assert rank["locked"]["rc"] == 2 and "is being written by rcnn test" in err, err
        assert "gloo" not in err.lower() and "Connection" not in err, err


def test_detect_on_only_unreadable_images_reports_them(trained, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    argv = ["detect", str(trained / "run"), str(folder), "--out", str(tmp_path / "d"), *FLAGS]
    assert main(argv) == 0
    assert "0 detections in 0 images (1 skipped)" in capsys.readouterr().out


def test_detect_never_writes_over_its_inputs_and_reads_plain_files_only(trained, tmp_path):
    import os

    images = tmp_path / "imgs"
    (images / "a").mkdir(parents=True)
    (images / "b").mkdir()
    source = trained / "voc" / "JPEGImages" / "000002.jpg"
    for path in (images / "x.jpg", images / "a" / "x.jpg", images / "b" / "x-2.jpg"):
        shutil.copy(source, path)
    before = (images / "x.jpg").read_bytes()
    base = [str(trained / "run"), "--cache-dir", str(trained / "cache"), *FLAGS]
    # Pictures into the folder of the inputs could replace them: refused before any work.
    assert main(["detect", *base[:1], str(images), "--out", str(images), *base[1:]]) == 2
    assert (images / "x.jpg").read_bytes() == before
    assert sorted(p.name for p in images.iterdir()) == ["a", "b", "x.jpg"]
    # A FIFO or a device behind an image name is skipped, not read (it would hang or never end).
    os.mkfifo(images / "a" / "pipe.jpg")
    (images / "a" / "zero.jpg").symlink_to("/dev/zero")
    out = tmp_path / "out"
    argv = ["detect", *base[:1], str(images / "a"), str(images / "b"), str(images / "x.jpg"),
            str(images / "a" / "x.jpg"), "--out", str(out), *base[1:]]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    # Three images (the one given twice is detected once), three distinct pictures.
    assert [r["picture"] for r in records] == ["x.jpg", "x-2.jpg", "x-3.jpg"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "detections.jsonl", "x-2.jpg", "x-3.jpg", "x.jpg"]  # fmt: skip
    assert main(["detect", *base[:1], str(images / "a" / "zero.jpg"), "--out",
                 str(tmp_path / "z"), *base[1:]]) == 2  # fmt: skip
    # --overwrite replaces the whole previous result, pictures of other names included.
    argv = ["detect", *base[:1], str(images / "b"), "--out", str(out), "--overwrite", *base[1:]]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "detections.jsonl", "x-2.jpg"]  # fmt: skip


def test_rcnn_test_detects_changed_inputs_again(trained, tmp_path, caplog):
    voc = tmp_path / "voc"
    shutil.copytree(trained / "voc", voc)
    ids = read_id_file(VOCDataset(voc).split_path("test"))[:3]
    (voc / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in ids))
    out = tmp_path / "test"
    argv = ["test", str(trained / "run"), "--voc-root", str(voc), "--out", str(out),
            "--cache-dir", str(trained / "cache"), *FLAGS]  # fmt: skip
    (voc / "JPEGImages" / f"{ids[0]}.jpg").write_bytes(b"broken")
    assert main(argv) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert len(first["skipped"]) == 1
    saved = {i: (out / "detections" / f"{i}.npz").stat().st_mtime_ns for i in ids}
    # The broken image fixed, another annotation edited: only those two are detected again.
    shutil.copy(trained / "voc" / "JPEGImages" / f"{ids[0]}.jpg", voc / "JPEGImages")
    xml = voc / "Annotations" / f"{ids[1]}.xml"  # edited: its size no longer the image's
    xml.write_text(xml.read_text().replace("<width>256</width>", "<width>300</width>"))
    (out / "detections" / f".{ids[2]}.npz.abcd1234.tmp").write_bytes(b"half")
    assert main(argv) == 0
    again = {i: (out / "detections" / f"{i}.npz").stat().st_mtime_ns for i in ids}
    assert [again[i] != saved[i] for i in ids] == [True, True, False]
    assert json.loads((out / "metrics.json").read_text())["skipped"] == []
    assert not list(out.rglob("*.tmp"))
    assert f"{ids[1]}: the annotation says 300x192 but the image is 256x192" in caplog.text
    # A damaged per-image file is made again, with a warning, not trusted or fatal.
    (out / "detections" / f"{ids[2]}.npz").write_bytes(b"PK\x03\x04 truncated")
    assert main(argv) == 0
    assert "detections file (File is not a zip file); detecting that image again" in caplog.text


def test_an_rcnn_test_folder_is_not_rescored_in_place(trained, tmp_path, capsys):
    out = tmp_path / "t"
    out.mkdir()
    (out / "settings.json").write_text("{}")
    (out / "metrics.json").write_text('{"proposal_recall": 1.0}')
    shutil.copy(trained / "voc" / "ImageSets" / "Main" / "car_test.txt",
                out / "comp4_det_test_car.txt")  # fmt: skip
    argv = ["test", "--dets", str(out), "--voc-root", str(trained / "voc")]
    assert main(argv) == 2
    assert "pass --out" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text()) == {"proposal_recall": 1.0}


def test_another_programs_results_in_out_are_refused_untouched(trained, tmp_path, capsys):
    # Another detector's results, without the settings.json of an rcnn test run beside them.
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "comp4_det_test_car.txt").write_text("000001 0.9 1 1 20 20\n")
    argv = ["test", str(trained / "run"), "--voc-root", str(trained / "voc"), "--out", str(out),
            "--cache-dir", str(trained / "cache"), *FLAGS]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "comp4_det_test_car.txt, which rcnn test did not write" in err and "--overwrite" in err
    assert (out / "comp4_det_test_car.txt").read_text() == "000001 0.9 1 1 20 20\n"
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["comp4_det_test_car.txt"]


def test_a_model_of_other_classes_than_the_split_is_refused(trained, tmp_path, capsys):
    voc = tmp_path / "voc"
    shutil.copytree(trained / "voc", voc)
    for xml in (voc / "Annotations").glob("*.xml"):
        xml.write_text(xml.read_text().replace("<name>car</name>", "<name>bus</name>"))
    argv = ["test", str(trained / "run"), "--voc-root", str(voc), "--out", str(tmp_path / "t"),
            *FLAGS]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no (non-difficult) object of ['car']" in err and "['bus']" in err
    assert not (tmp_path / "t").exists(), "refused before anything was written"


@pytest.mark.precision
def test_rcnn_test_never_mixes_precisions(
    one_epoch_model, prepared, tmp_path, monkeypatch, capsys, native_bf16
):
    # Any model will do: the session's one-epoch run, on the two images of its val split.
    voc = prepared.parent / "voc"
    assert len(read_id_file(VOCDataset(voc).split_path("val"))) <= 4
    argv = ["test", str(one_epoch_model), "--voc-root", str(voc), "--split", "val", "--out",
            str(tmp_path / "t"), "--cache-dir", str(tmp_path / "cache"), *FLAGS]  # fmt: skip
    assert main(argv) == 0  # automatic precision: as RCNN_NATIVE_BF16 says
    amp = json.loads((tmp_path / "t" / "settings.json").read_text())["amp"]
    assert amp is native_bf16
    monkeypatch.setenv("RCNN_NATIVE_BF16", "0" if amp else "1")  # another machine's default
    assert main(argv) == 2
    assert "other settings (amp)" in capsys.readouterr().err


def test_class_names_from_a_checkpoint_never_become_paths(trained, tmp_path, capsys):
    state = torch.load(trained / "run" / "best.pt", weights_only=True)
    state["classes"] = ["background", "../../../notes"]
    torch.save(state, tmp_path / "hostile.pt")
    out = tmp_path / "a" / "b" / "out"
    argv = ["test", str(tmp_path / "hostile.pt"), "--voc-root", str(trained / "voc"),
            "--out", str(out), *FLAGS]  # fmt: skip
    assert main(argv) == 2
    assert "not a usable class name" in capsys.readouterr().err
    assert not (tmp_path / "notes").exists() and not out.exists()


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_finished_run_stands_only_with_its_own_metrics(trained, tmp_path, capsys, caplog):
    out = tmp_path / "t"
    argv = ["test", str(trained / "run"), "--voc-root", str(trained / "voc"), "--out", str(out),
            "--cache-dir", str(trained / "cache"), *FLAGS]  # fmt: skip
    assert main(argv) == 0
    text = (out / "metrics.json").read_text()
    metrics = _strict(text)  # strict JSON: an undefined metric is null
    assert metrics["coco"]["APs"] is None, "no small object in these scenes"
    # Scoring another folder's result files into this run's folder is refused, as is scoring
    # the run's own files into itself: either would replace its metrics.
    voc = ["--voc-root", str(trained / "voc")]
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(out / "comp4_det_test_car.txt", other)
    for dets in (other, out):
        assert main(["test", "--dets", str(dets), *voc, "--out", str(out)]) == 2
        assert "holds an `rcnn test` run" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == text
    # metrics.json replaced since the run finished (same size, time restored): not served.
    stat = (out / "metrics.json").stat()
    edited = text.replace('"map": 0.', '"map": 1.', 1)
    assert edited != text and len(edited) == len(text)
    (out / "metrics.json").write_text(edited)
    os.utime(out / "metrics.json", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    caplog.set_level(logging.INFO)
    caplog.clear()
    assert main(argv) == 0
    assert "nothing changed" not in caplog.text
    assert (out / "metrics.json").read_text() == text
    assert main(argv) == 0  # and now it stands
    assert "nothing changed since its run finished" in caplog.text
    assert _strict((out / "metrics.json").read_text()) == metrics


def test_split_names_never_become_paths(trained, one_epoch_model, prepared, tmp_path, capsys):
    hostile = "x/../../../../PWNED"
    out = tmp_path / "esc" / "a" / "b" / "out"
    voc = ["--voc-root", str(trained / "voc")]
    run = str(trained / "run")
    cases = [
        ["test", run, *voc, "--split", hostile, "--out", str(out), *FLAGS],
        ["ablate", run, "--data", str(prepared), *voc, "--split", hostile, "--out", str(out),
         *FLAGS],
        ["visualize", run, "--data", str(prepared), "--split", hostile, "--out", str(out)],
        ["test", "--dets", str(tmp_path / "r.json"), *voc, "--classes", "car", "--split", hostile,
         "--out", str(out)],
        ["features", str(one_epoch_model), "--data", str(prepared), "--split", hostile, "--out",
         str(out)],
        ["train-svm", run, "--data", str(prepared), "--split", hostile, "--out", str(out)],
        ["train-bbox", run, "--data", str(prepared), "--split", hostile, "--out", str(out)],
        ["evaluate", run, "--data", str(prepared), "--split", hostile, "--out", str(out)],
        ["test", run, *voc, "--split", "test split", "--out", str(out), *FLAGS],
    ]  # fmt: skip
    (tmp_path / "r.json").write_text("[]")
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "is not a split name" in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "esc").exists() and not list(tmp_path.rglob("*PWNED*"))
