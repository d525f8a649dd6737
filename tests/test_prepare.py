import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rcnn.boxes import box_iou
from rcnn.cli import main
from rcnn.labels import PRESETS
from rcnn.prepare import BadImageError, PrepareConfig, run_prepare
from rcnn.proposals import ProposalCache, ProposalConfig
from rcnn.regions import RegionSet
from rcnn.voc import VOCFormatError

from .conftest import write_xml


def config(voc, out, cache, **kw):
    kw.setdefault("proposals", ProposalConfig("fast"))
    return PrepareConfig(
        voc_root=str(voc), out=str(out), cache_dir=str(cache), workers=1, progress=False, **kw
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
    assert a.keys() == b.keys() and len(a) == 10
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
    assert "3.xml: has no <object>" in reasons["3"]
    assert train["images"] == 1 and train["positives"] > 0


def test_strict_stops_but_keeps_computed_proposals(small_voc, tmp_path):
    (small_voc / "JPEGImages" / "000003.jpg").write_bytes(b"broken")
    with pytest.raises(BadImageError, match="--strict: 1 bad image.*000003.jpg"):
        run_prepare(config(small_voc, tmp_path / "out", tmp_path / "cache", strict=True))
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 2


def test_split_with_no_usable_image(small_voc, tmp_path):
    for i in ("000005", "000006"):
        (small_voc / "JPEGImages" / f"{i}.jpg").unlink()
    with pytest.raises(VOCFormatError, match="split 'val' .* no usable image"):
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
