import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rcnn.cli import main
from rcnn.data.annotations import DatasetError
from rcnn.data.config import PrepareConfig, ProposalConfig
from rcnn.data.labels import PRESETS
from rcnn.data.prepare import BadImageError, run_prepare
from rcnn.data.proposals import ProposalCache
from rcnn.data.regions import RegionSet
from rcnn.data.voc import VOCFormatError
from rcnn.ops.boxes import box_iou
from tests.helpers import png_declaring, write_xml


def config(voc, out, cache, **kw):
    kw.setdefault("proposals", ProposalConfig("fast"))
    kw.setdefault("workers", 1)
    return PrepareConfig(
        voc_root=str(voc), out=str(out), cache_dir=str(cache), progress=False, **kw
    )


def store_files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*.*"))
        if p.name not in ("summary.json", ".lock")
    }


def test_end_to_end_regions_are_consistent(small_voc, tmp_path):
    summary = run_prepare(config(small_voc, tmp_path / "out", tmp_path / "cache"))
    train = RegionSet.load(tmp_path / "out" / "train")
    assert [Path(p).name for p in train.image_paths] == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert train.classes == ["car"]
    s = summary["splits"]["train"]
    assert (s["images"], s["positives"], s["negatives"]) == (
        3,
        train.num_positive,
        train.num_negative,
    )
    assert s["positives"] > 0 and s["negatives"] > 0 and s["skipped"] == []
    # Every stored label agrees with a recomputation against the image's own ground truth.
    gts = {0: [[10, 10, 50, 40]], 1: [[40, 20, 90, 60]], 2: [[5, 30, 45, 70]]}  # difficult out
    for i, gt in gts.items():
        mine = train.image_index == i
        ious = box_iou(train.boxes[mine], gt).max(axis=1)
        np.testing.assert_allclose(train.ious[mine], ious, rtol=1e-6)
        np.testing.assert_array_equal(train.labels[mine] > 0, ious >= 0.5)
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["splits"]["val"]["images"] == 2


def test_two_runs_give_identical_files(small_voc, tmp_path):
    run_prepare(config(small_voc, tmp_path / "a", tmp_path / "cache_a"))
    run_prepare(config(small_voc, tmp_path / "b", tmp_path / "cache_b"))
    a, b = store_files(tmp_path / "a"), store_files(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 2 * 12  # 11 arrays and meta.json a split
    assert a == b


def test_rerun_with_other_thresholds_uses_cache(small_voc, tmp_path):
    run_prepare(config(small_voc, tmp_path / "a", tmp_path / "cache"))
    summary = run_prepare(
        config(small_voc, tmp_path / "b", tmp_path / "cache", labels=PRESETS["paper"])
    )
    assert summary["splits"]["train"]["from_cache"] == 3
    assert summary["splits"]["val"]["from_cache"] == 2


def test_paper_preset_keeps_difficult_and_adds_gt(small_voc, tmp_path):
    run_prepare(config(small_voc, tmp_path / "out", tmp_path / "cache", labels=PRESETS["paper"]))
    train = RegionSet.load(tmp_path / "out" / "train")
    third = train.boxes[train.image_index == 2].tolist()
    assert [60, 5, 90, 30] in third and [5, 30, 45, 70] in third  # difficult box included


def test_multiclass_labels(small_voc, tmp_path):
    run_prepare(config(small_voc, tmp_path / "out", tmp_path / "cache", classes=["car", "dog"]))
    train = RegionSet.load(tmp_path / "out" / "train")
    assert train.classes == ["car", "dog"]
    assert set(np.unique(train.labels)) == {0, 1, 2}
    assert len(train.image_paths) == 4  # the dog-only image is chosen too


def test_a_class_without_objects_is_named_when_prepared(small_voc, tmp_path, caplog):
    run_prepare(config(small_voc, tmp_path / "out", tmp_path / "cache", classes=["car", "bus"]))
    assert "no object region of bus; check --classes" in caplog.text


def test_bad_images_are_skipped_and_listed(make_voc, tmp_path):
    voc = make_voc([(f"{i}", "train", [("car", (10, 10, 50, 40), False)]) for i in range(5)])
    (voc / "JPEGImages" / "0.jpg").unlink()
    (voc / "JPEGImages" / "1.jpg").write_bytes(b"\xff\xd8\xff junk")
    (voc / "Annotations" / "2.xml").write_text("<annotation><object>")
    write_xml(voc / "Annotations" / "3.xml", "3.jpg", (96, 72), [])
    summary = run_prepare(config(voc, tmp_path / "out", tmp_path / "cache", splits=["train"]))
    train = summary["splits"]["train"]
    reasons = {s["image"]: s["reason"] for s in train["skipped"]}
    assert "0.jpg: cannot read image" in reasons["0"]
    assert "1.jpg: not a readable image" in reasons["1"]
    assert "2.xml: malformed XML" in reasons["2"]
    assert "3.xml: 3 has no object" in reasons["3"]
    assert train["images"] == 1 and train["positives"] > 0


def test_an_image_over_the_pixel_limit_is_skipped_and_named(small_voc, tmp_path, monkeypatch):
    (small_voc / "JPEGImages" / "000006.jpg").write_bytes(png_declaring(30000, 30000))
    summary = run_prepare(config(small_voc, tmp_path / "out", tmp_path / "cache"))
    (skipped,) = summary["splits"]["val"]["skipped"]
    assert skipped["image"] == "000006"
    assert "000006.jpg: 30000x30000 pixels, more than the limit of 89,478,485" in skipped["reason"]
    # A limit lowered since holds for images whose proposals are cached as well.
    monkeypatch.setenv("RCNN_MAX_IMAGE_PIXELS", str(96 * 72 - 1))
    strict = config(small_voc, tmp_path / "out", tmp_path / "cache", strict=True)
    with pytest.raises(BadImageError, match="000001.jpg: 96x72 pixels, more than the limit"):
        run_prepare(strict)


def test_strict_stops_but_keeps_computed_proposals(small_voc, tmp_path):
    (small_voc / "JPEGImages" / "000003.jpg").write_bytes(b"broken")
    with pytest.raises(BadImageError, match="--strict: 1 bad image.*000003.jpg"):
        run_prepare(config(small_voc, tmp_path / "out", tmp_path / "cache", strict=True))
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 2


def test_split_with_no_usable_image(small_voc, tmp_path):
    for i in ("000005", "000006"):
        (small_voc / "JPEGImages" / f"{i}.jpg").unlink()
    with pytest.raises(DatasetError, match="split 'val' .* no usable image"):
        run_prepare(config(small_voc, tmp_path / "out", tmp_path / "cache"))


def test_image_with_no_proposals_is_skipped(small_voc, tmp_path):
    # Selective Search always returns the whole-image segment, so an empty result is planted in
    # the cache, where one from another proposal method or a future filter would come from.
    image = small_voc / "JPEGImages" / "000002.jpg"
    key = ProposalCache.key(image.read_bytes(), ProposalConfig("fast"))
    ProposalCache(tmp_path / "cache").put(key, np.zeros((0, 4), np.int32), (96, 72))
    summary = run_prepare(config(small_voc, tmp_path / "out", tmp_path / "cache"))
    (skipped,) = summary["splits"]["train"]["skipped"]
    assert (
        skipped["image"] == "000002"
        and "000002.jpg: Selective Search found no" in skipped["reason"]
    )


def test_cli_errors_name_flag_or_file(small_voc, tmp_path, capsys):
    assert main(["prepare", "--voc-root", str(tmp_path / "x"), "--out", str(tmp_path)]) == 2
    assert "Annotations not found" in capsys.readouterr().err
    args = [
        "prepare",
        "--voc-root",
        str(small_voc),
        "--out",
        str(tmp_path / "o"),
        "--cache-dir",
        str(tmp_path / "c"),
        "--mode",
        "fast",
    ]
    assert main([*args, "--pos-iou", "0.3"]) == 2
    assert "--neg-iou-max (0.5) must not exceed --pos-iou (0.3)" in capsys.readouterr().err
    assert main([*args, "--classes", "unicorn"]) == 2
    assert "unknown class ['unicorn']" in capsys.readouterr().err


def test_cli_synth_then_prepare(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "voc"), "--images", "6", "--size", "96x72"]) == 0
    assert (
        main(
            [
                "prepare",
                "--voc-root",
                str(tmp_path / "voc"),
                "--out",
                str(tmp_path / "out"),
                "--cache-dir",
                str(tmp_path / "c"),
                "--mode",
                "fast",
                "--workers",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "positives" in out and "train" in out and "summary.json" in out
    assert len(RegionSet.load(tmp_path / "out" / "train")) > 0


def test_killed_run_reuses_cache_and_matches_clean_run(make_voc, tmp_path):
    specs = [(f"{i:03d}", "train", [("car", (20 + i, 20, 120, 90), False)]) for i in range(12)]
    voc = make_voc(specs, size=(200, 150))
    cache = tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "rcnn",
        "prepare",
        "--voc-root",
        str(voc),
        "--split",
        "train",
        "--out",
        str(tmp_path / "killed"),
        "--cache-dir",
        str(cache),
        "--workers",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(cache.rglob("*.npz"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(cache.rglob("*.npz")))
    assert 3 <= done_before < 12, "the run should be killed part-way"
    assert not (tmp_path / "killed" / "train" / "meta.json").exists()

    resumed = run_prepare(
        PrepareConfig(
            str(voc),
            str(tmp_path / "killed"),
            splits=["train"],
            cache_dir=str(cache),
            workers=1,
            progress=False,
        )
    )
    assert resumed["splits"]["train"]["from_cache"] >= done_before
    run_prepare(
        PrepareConfig(
            str(voc),
            str(tmp_path / "clean"),
            splits=["train"],
            cache_dir=str(tmp_path / "cache2"),
            workers=1,
            progress=False,
        )
    )
    assert store_files(tmp_path / "killed") == store_files(tmp_path / "clean")


def test_failed_split_keeps_the_previous_stores(small_voc, tmp_path):
    out = tmp_path / "out"
    run_prepare(config(small_voc, out, tmp_path / "cache"))
    before = {**store_files(out), "summary.json": (out / "summary.json").read_bytes()}
    # A later split fails: no image of val is flagged as showing a car any more.
    (small_voc / "ImageSets/Main/car_val.txt").write_text("000005 -1\n000006 -1\n")
    with pytest.raises(VOCFormatError, match="car_val.txt"):
        run_prepare(config(small_voc, out, tmp_path / "cache", labels=PRESETS["paper"]))
    after = {**store_files(out), "summary.json": (out / "summary.json").read_bytes()}
    assert after == before
    assert not list(out.glob(".prepare-*")), "the staging folder is removed"


def test_a_second_prepare_on_the_same_out_is_refused(small_voc, tmp_path):
    from rcnn.errors import RcnnError
    from rcnn.files import output_lock

    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out, "rcnn prepare"), pytest.raises(RcnnError, match="being written by"):
        run_prepare(config(small_voc, out, tmp_path / "cache"))
    run_prepare(config(small_voc, out, tmp_path / "cache"))  # free again afterwards


def test_stores_of_different_runs_are_not_trained_together(small_voc, tmp_path):
    from rcnn.data.regions import load_train_val
    from rcnn.errors import RcnnError

    run_prepare(config(small_voc, tmp_path / "a", tmp_path / "cache"))
    run_prepare(config(small_voc, tmp_path / "b", tmp_path / "cache", labels=PRESETS["paper"]))
    load_train_val(tmp_path / "a")  # one run: fine
    (tmp_path / "a" / "val").rename(tmp_path / "old-val")
    (tmp_path / "b" / "val").rename(tmp_path / "a" / "val")
    with pytest.raises(RcnnError, match="different `rcnn prepare` runs"):
        load_train_val(tmp_path / "a")


@pytest.mark.parametrize("workers", [1, 2])
def test_empty_jpeg_is_skipped_and_named(small_voc, tmp_path, workers, caplog):
    (small_voc / "JPEGImages" / "000006.jpg").write_bytes(b"")
    cfg = config(small_voc, tmp_path / "out", tmp_path / "cache", workers=workers)
    summary = run_prepare(cfg)
    skipped = summary["splits"]["val"]["skipped"]
    assert [s["image"] for s in skipped] == ["000006"]
    assert "000006.jpg: an empty file" in skipped[0]["reason"]
    assert "000006.jpg" in caplog.text
    strict = config(small_voc, tmp_path / "out2", tmp_path / "cache", strict=True)
    with pytest.raises(BadImageError, match="000006.jpg: an empty file"):
        run_prepare(strict)


def test_identical_images_are_searched_once(small_voc, tmp_path, monkeypatch):
    import shutil

    import rcnn.data.proposals as proposals

    jpegs = small_voc / "JPEGImages"
    shutil.copyfile(jpegs / "000001.jpg", jpegs / "000002.jpg")
    calls = []
    real = proposals.selective_search
    monkeypatch.setattr(proposals, "selective_search", lambda *a: calls.append(1) or real(*a))
    paths = [str(jpegs / f"00000{i}.jpg") for i in (1, 2, 3)]
    results = proposals.compute_proposals(paths, ProposalConfig("fast"), None, 1, False)
    assert len(calls) == 2, "000001 and its copy 000002 share one search"
    assert np.array_equal(results[0].boxes, results[1].boxes)
    assert [r.path for r in results] == paths


def test_capitalised_class_names_still_give_regions(make_voc, tmp_path):
    specs = [
        ("1", "train", [("Car", (10, 10, 50, 40), False)]),
        ("2", "val", [("CAR ", (20, 15, 70, 55), False)]),
    ]
    root = make_voc(specs, class_files=())
    main_dir = root / "ImageSets" / "Main"
    (main_dir / "car_train.txt").write_text("1  1\n")
    (main_dir / "car_val.txt").write_text("2  1\n")
    summary = run_prepare(config(root, tmp_path / "out", tmp_path / "cache"))
    assert all(s["positives"] > 0 for s in summary["splits"].values())


def test_a_failed_publish_puts_the_previous_stores_back(small_voc, tmp_path, monkeypatch):
    import os as os_module

    out = tmp_path / "out"
    run_prepare(config(small_voc, out, tmp_path / "cache"))
    before = {**store_files(out), "summary.json": (out / "summary.json").read_bytes()}
    real = os_module.replace

    def failing(src, dst):
        if str(dst).endswith("summary.json") and ".prepare-" in str(src):
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr("rcnn.data.prepare.os.replace", failing)
    with pytest.raises(OSError, match="disk full"):
        run_prepare(config(small_voc, out, tmp_path / "cache", labels=PRESETS["paper"]))
    monkeypatch.undo()
    after = {**store_files(out), "summary.json": (out / "summary.json").read_bytes()}
    assert after == before
    with pytest.raises(ValueError, match="names a split twice"):
        config(small_voc, out, tmp_path / "cache", splits=["train", "train"])


def test_a_killed_publish_is_repaired_by_the_next_run(small_voc, tmp_path):
    out = tmp_path / "out"
    run_prepare(config(small_voc, out, tmp_path / "cache"))
    before = store_files(out / "val")
    # Killed after moving the previous val aside and before moving the new one in.
    stale = out / ".prepare-dead" / ".previous"
    stale.mkdir(parents=True)
    (out / "val").rename(stale / "val")
    with pytest.raises(FileNotFoundError):  # this run fails, but first puts val back
        run_prepare(config(small_voc, out, tmp_path / "cache", splits=["nosuch"]))
    assert store_files(out / "val") == before
    assert not (out / ".prepare-dead").exists()


def test_workers_leave_ctrl_c_to_the_parent():
    code = ("import signal\nfrom rcnn.data.proposals import _init_worker\n_init_worker()\n"
            "print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "True", done.stderr


def test_region_set_numbers_ground_truth_across_images():
    from rcnn.data.prepare import ImageRegions, region_set

    def image(path, gt, gt_index):
        n, g = len(gt_index), len(gt)
        gt = np.array(gt, np.int32).reshape(-1, 4)
        return ImageRegions(path, (10, 10), np.zeros((n, 4), np.int32), np.ones(n, np.int16),
                            np.ones(n, np.float32), np.array(gt_index), np.ones((n, 1)),
                            np.zeros(n, bool), gt, np.ones(g, np.int16), np.zeros(g, bool), n,
                            False)  # fmt: skip

    regions = region_set(
        [image("a.jpg", [[0, 0, 5, 5]], [0, -1]), image("b.jpg", [[1, 1, 4, 4]] * 2, [1, 0, -1])],
        ["car"],
        {"split": "train"},
    )
    # The second image's boxes are rows 1 and 2 of the split's ground truth.
    assert regions.truth.gt_index.tolist() == [0, -1, 2, 1, -1]
    assert regions.image_index.tolist() == [0, 0, 1, 1, 1]
    assert regions.truth.image.tolist() == [0, 1, 1]


def test_the_paper_preset_keeps_every_image_of_the_split(make_voc, tmp_path, capsys):
    """Images without a car (a dog alone; nothing at all) are background-only images of the
    paper's stores, every region of theirs a negative; the seed's keep the car images."""
    voc = make_voc([
        ("1", "train", [("car", (10, 10, 50, 40), False)]),
        ("2", "train", [("dog", (20, 20, 60, 60), False)]),
        ("3", "train", []),
        ("4", "train", [("car", (40, 20, 90, 60), False)]),
    ])  # fmt: skip
    common = [
        "prepare",
        "--voc-root",
        str(voc),
        "--split",
        "train",
        "--mode",
        "fast",
        "--workers",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    assert main([*common, "--out", str(tmp_path / "paper"), "--preset", "paper"]) == 0
    table = capsys.readouterr().out
    paper = RegionSet.load(tmp_path / "paper" / "train")
    assert [Path(p).stem for p in paper.image_paths] == ["1", "2", "3", "4"]
    for background in (1, 2):
        mine = paper.image_index == background
        assert mine.sum() > 0 and (paper.labels[mine] == 0).all()
        assert (paper.truth.gt_index[mine] == -1).all() and not paper.truth.class_ious[mine].any()
    assert sorted(set(paper.truth.image.tolist())) == [0, 3]
    s = json.loads((tmp_path / "paper" / "summary.json").read_text())["splits"]["train"]
    assert (s["images"], s["with_objects"], s["background_only"], s["skipped"]) == (4, 2, 2, [])
    assert s["negatives"] == paper.num_negative
    assert paper.info["labels"]["background_images"] is True
    assert table.splitlines()[1].split()[:5] == ["train", "4", "2", "2", "0"]
    assert main([*common, "--out", str(tmp_path / "seed")]) == 0  # the seed's car images
    seed = RegionSet.load(tmp_path / "seed" / "train")
    assert [Path(p).stem for p in seed.image_paths] == ["1", "4"]
    s = json.loads((tmp_path / "seed" / "summary.json").read_text())["splits"]["train"]
    assert (s["images"], s["with_objects"], s["background_only"]) == (2, 2, 0)
