"""Precomputed proposals: R-CNN's and Fast R-CNN's .mat layout, read where Selective Search
would run, and written from this project's own searches."""

import json

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from rcnn.cli import main
from rcnn.data.proposal_files import ProposalFileError, read_proposal_file, write_proposal_file
from rcnn.data.regions import RegionSet


def rcnn_mat(path, ids, yxyx_boxes, images_as_cells=True) -> None:
    """A file as R-CNN's selective_search_boxes.m saves it: 'boxes' a 1 x N cell of [K, 4]
    [y1 x1 y2 x2] 1-based arrays, 'images' an N x 1 cell of ids (or a char matrix)."""
    cells = np.empty((1, len(yxyx_boxes)), dtype=object)
    for i, b in enumerate(yxyx_boxes):
        b = np.asarray(b, np.float64)
        cells[0, i] = b if b.ndim == 2 else b.reshape(-1, 4)
    if images_as_cells:
        names = np.empty((len(ids), 1), dtype=object)
        for i, image_id in enumerate(ids):
            names[i, 0] = image_id
    else:
        names = list(ids)
    savemat(path, {"boxes": cells, "images": names})


def test_the_rcnn_layout_converts_as_fast_rcnn_reads_it(tmp_path):
    # Fast R-CNN: raw[:, (1, 0, 3, 2)] - 1 gives 0-based inclusive x1 y1 x2 y2; the project's
    # boxes end one past the last pixel.
    rcnn_mat(tmp_path / "p.mat", ["a", "b"], [[[11, 21, 40, 60], [1, 1, 5, 5]], []])
    found = read_proposal_file(tmp_path / "p.mat")
    np.testing.assert_array_equal(found.boxes["a"], [[20, 10, 60, 40], [0, 0, 5, 5]])
    assert found.boxes["b"].shape == (0, 4)
    rcnn_mat(tmp_path / "chars.mat", ["a", "b"], [[[11, 21, 40, 60]], []], images_as_cells=False)
    assert sorted(read_proposal_file(tmp_path / "chars.mat").boxes) == ["a", "b"]


def test_a_written_file_has_rcnns_layout_and_reads_back(tmp_path):
    boxes = [np.array([[20, 10, 60, 40], [0, 0, 5, 5]]), np.zeros((0, 4))]
    write_proposal_file(tmp_path / "w.mat", ["000001", "000002"], boxes)
    raw = loadmat(tmp_path / "w.mat")
    assert raw["boxes"].shape == (1, 2) and raw["images"].shape == (2, 1)
    np.testing.assert_array_equal(raw["boxes"][0, 0], [[11, 21, 40, 60], [1, 1, 5, 5]])
    again = read_proposal_file(tmp_path / "w.mat")
    np.testing.assert_array_equal(again.boxes["000001"], boxes[0])
    assert again.digest == read_proposal_file(tmp_path / "w.mat").digest


def test_files_of_another_kind_are_one_line_errors(small_voc, tmp_path, capsys):
    v73 = (b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116, b" ")
           + b"\x00" * 8 + b"\x00\x02IM" + b"\x89HDF\r\n" + b"\x00" * 400)  # fmt: skip
    (tmp_path / "v73.mat").write_bytes(v73)
    (tmp_path / "text.mat").write_text("boxes,images\n")
    savemat(tmp_path / "keys.mat", {"proposals": np.zeros((1, 4))})
    rcnn_mat(tmp_path / "short.mat", ["000001", "000002"], [[[1, 1, 5, 5]]])
    rcnn_mat(tmp_path / "wide.mat", ["000001"], [[[1, 1, 5]]])
    rcnn_mat(tmp_path / "twice.mat", ["000001", "000001"], [[[1, 1, 5, 5]], [[1, 1, 5, 5]]])
    cases = {
        "v73.mat": "MATLAB v7.3 (HDF5) file, which scipy cannot read",
        "text.mat": "not a readable .mat file",
        "keys.mat": "holds ['proposals']; expected R-CNN's layout",
        "short.mat": "1 box arrays for 2 images",
        "wide.mat": "not [K, 4] numbers",
        "twice.mat": "lists image 000001 twice",
        "gone.mat": "gone.mat: file not found",
    }
    for name, message in cases.items():
        argv = ["prepare", "--voc-root", str(small_voc), "--out", str(tmp_path / "out"),
                "--proposals", str(tmp_path / name), "--no-progress"]  # fmt: skip
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (name, err)
    assert not (tmp_path / "out" / "train").exists()


def test_prepare_reads_the_searched_proposals_back_from_a_file(small_voc, tmp_path, caplog, capsys):
    common = ["--voc-root", str(small_voc), "--mode", "fast", "--cache-dir",
              str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    export = ["proposals", *common, "--split", "train", "--out"]
    assert main([*export, str(tmp_path / "t.mat")]) == 0
    written = (tmp_path / "t.mat").read_bytes()
    (tmp_path / "folder.mat").mkdir()
    for out, message in ((tmp_path / "t.mat", "exists; pass --overwrite"),
                         (tmp_path / "folder.mat", "is a folder"),
                         (tmp_path / "t.txt", "written as a .mat file")):  # fmt: skip
        assert main([*export, str(out)]) == 2
        assert message in capsys.readouterr().err
    assert main([*export, str(tmp_path / "t.mat"), "--overwrite"]) == 0
    assert (tmp_path / "t.mat").read_bytes() == written
    assert main([*export, str(tmp_path / "upper.MAT")]) == 0
    assert main(["prepare", *common, "--split", "train", "--out", str(tmp_path / "ss")]) == 0
    argv = ["prepare", "--voc-root", str(small_voc), "--split", "train", "--no-progress",
            "--proposals", str(tmp_path / "t.mat"), "--out", str(tmp_path / "file")]  # fmt: skip
    assert main(argv) == 0
    searched, read = (RegionSet.load(tmp_path / d / "train") for d in ("ss", "file"))
    np.testing.assert_array_equal(read.boxes, searched.boxes)
    np.testing.assert_array_equal(read.labels, searched.labels)
    digest = read_proposal_file(tmp_path / "t.mat").digest
    assert read.info["proposals"] == f"file/sha256={digest}"  # changed proposals: new stores
    assert read.info["generation"] != searched.info["generation"]
    # Boxes past the image, empty or not finite: clipped or left out, each kind named once.
    raw = loadmat(tmp_path / "t.mat")
    first = raw["boxes"][0, 0]
    raw["boxes"][0, 0] = np.concatenate([first, [[1, 1, 500, 500], [5, 5, 4, 4],
                                                 [np.nan, 1, 2, 2]]])  # fmt: skip
    savemat(tmp_path / "edited.mat", {"boxes": raw["boxes"], "images": raw["images"]})
    argv[argv.index(str(tmp_path / "t.mat"))] = str(tmp_path / "edited.mat")
    argv[-1] = str(tmp_path / "edited")
    assert main(argv) == 0
    assert "1 box(es) of 1 image(s) past the image, clipped to it: 000001" in caplog.text
    assert "box(es) of 1 image(s) empty, repeated or not finite, left out: 000001" in caplog.text
    # A file without an image of the split: refused, naming it, before any work.
    ids = [str(np.asarray(x).ravel()[0]) for x in raw["images"].ravel()]
    rcnn_mat(tmp_path / "part.mat", ids[1:], [b for b in raw["boxes"].ravel()[1:]])
    argv[argv.index(str(tmp_path / "edited.mat"))] = str(tmp_path / "part.mat")
    assert main(argv) == 2
    assert not (tmp_path / "edited" / ".prepare-").exists()


def test_rcnn_test_on_a_proposal_file_detects_as_on_its_search(trained, tmp_path, capsys):
    voc, cache = str(trained / "voc"), str(trained / "cache")
    assert main(["proposals", "--voc-root", voc, "--split", "test", "--mode", "fast",
                 "--cache-dir", cache, "--out", str(tmp_path / "test.mat"),
                 "--no-progress"]) == 0  # fmt: skip
    common = ["test", str(trained / "run"), "--voc-root", voc, "--device", "cpu", "--workers",
              "1", "--cache-dir", cache, "--no-progress"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "ss")]) == 0
    with_file = [*common, "--proposals", str(tmp_path / "test.mat"), "--out", str(tmp_path / "f")]
    assert main(with_file) == 0
    name = "comp4_det_test_car.txt"
    assert (tmp_path / "f" / name).read_bytes() == (tmp_path / "ss" / name).read_bytes()
    settings = json.loads((tmp_path / "f" / "settings.json").read_text())
    assert settings["proposals"].startswith("file/sha256=")
    # Other proposals in the same folder: refused, never mixed with the first ones' results.
    raw = loadmat(tmp_path / "test.mat")
    raw["boxes"][0, 0] = raw["boxes"][0, 0][:5]
    savemat(tmp_path / "test.mat", {"boxes": raw["boxes"], "images": raw["images"]})
    capsys.readouterr()
    assert main(with_file) == 2
    assert "other settings (proposals)" in capsys.readouterr().err


def test_a_file_missing_images_of_the_split_is_named(trained, tmp_path, capsys):
    ids = (trained / "voc" / "ImageSets" / "Main" / "test.txt").read_text().split()
    rcnn_mat(tmp_path / "some.mat", ids[:1], [[[1, 1, 20, 20]]])
    argv = ["test", str(trained / "run"), "--voc-root", str(trained / "voc"), "--device", "cpu",
            "--proposals", str(tmp_path / "some.mat"), "--out", str(tmp_path / "t")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"has no proposals for {len(ids) - 1} image(s)" in err and ids[1] in err
    assert not (tmp_path / "t" / "detections").exists()
    with pytest.raises(ProposalFileError):
        read_proposal_file(tmp_path / "some.mat").check_ids(ids, "the test split")


def test_an_image_of_more_boxes_than_the_cap_keeps_the_files_first(small_voc, tmp_path, caplog):
    """--max-proposals: the first boxes in the file's order, the image named in one warning
    for all the images read (not one a chunk); an image without boxes in the file is said so."""
    from rcnn.data.proposal_files import FileProposals

    many = [[1 + i, 1 + i, 30 + i, 40 + i] for i in range(40)]  # y1 x1 y2 x2, all distinct
    ids = ["000001", "000002", "000003", "000004"]
    rcnn_mat(tmp_path / "p.mat", ids, [many, many[:3], [], many[:5]])
    paths = [str(small_voc / "JPEGImages" / f"{i}.jpg") for i in ids]
    with FileProposals(tmp_path / "p.mat", 10) as source:
        first = source.compute(paths[:2])  # two chunks, as `rcnn detect` reads them
        source.compute(paths[2:])
        assert "max-proposals" not in caplog.text  # told once, on leaving
    expected = read_proposal_file(tmp_path / "p.mat").boxes["000001"][:10]
    np.testing.assert_array_equal(np.unique(first[0].boxes, axis=0), np.unique(expected, axis=0))
    assert len(first[1].boxes) == 3
    (cut,) = [r for r in caplog.records if "--max-proposals" in r.getMessage()]
    assert "1 image(s) have more than --max-proposals 10 boxes; the first 10 of each, in " \
        "the file's order, are read: 000001 (40)" in cut.getMessage()  # fmt: skip
    argv = ["prepare", "--voc-root", str(small_voc), "--split", "train", "--no-progress",
            "--proposals", str(tmp_path / "p.mat"), "--max-proposals", "10", "--out",
            str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    regions = RegionSet.load(tmp_path / "out" / "train")
    digest = read_proposal_file(tmp_path / "p.mat").digest
    assert regions.info["proposals"] == f"file/sha256={digest}/first=10"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["splits"]["train"]
    (skipped,) = summary["skipped"]
    assert skipped["image"] == "000003" and "Selective Search" not in skipped["reason"]
    assert f"--proposals {tmp_path / 'p.mat'} holds no box for it" in skipped["reason"]
