import json

import numpy as np
import pytest
import torch

from rcnn.data.regions import RegionSet, RegionStoreError, load_split


def make_set(n=50, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 50, size=(n, 2))
    return RegionSet(
        image_paths=["/data/a.jpg", "/data/b.jpg", "/data/c.jpg"],
        image_index=rng.integers(0, 3, size=n),
        boxes=np.concatenate([xy, xy + rng.integers(1, 40, size=(n, 2))], axis=1),
        labels=rng.integers(0, 3, size=n),
        ious=rng.random(n),
        classes=["car", "bus"],
        image_sizes=[(100, 80), (90, 90), (64, 48)],
        info={"split": "train"},
    )


def test_round_trip(tmp_path):
    rs = make_set()
    rs.save(tmp_path / "train")
    back = RegionSet.load(tmp_path / "train")
    assert back.image_paths == rs.image_paths and back.classes == rs.classes
    assert back.image_sizes == rs.image_sizes and back.info == rs.info
    for name in ("image_index", "boxes", "labels", "ious"):
        np.testing.assert_array_equal(getattr(back, name), getattr(rs, name))
    assert back.boxes.dtype == np.int32 and back.boxes.shape == (50, 4)
    assert len(back) == 50 and back.num_positive + back.num_negative == 50


def test_save_is_byte_deterministic(tmp_path):
    make_set().save(tmp_path / "a")
    make_set().save(tmp_path / "b")
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name


def test_invalid_arrays_rejected():
    rs = make_set()
    with pytest.raises(ValueError, match="same length"):
        RegionSet(rs.image_paths, rs.image_index[:-1], rs.boxes, rs.labels, rs.ious, rs.classes)
    with pytest.raises(ValueError, match="image_index refers"):
        RegionSet(rs.image_paths[:1], rs.image_index, rs.boxes, rs.labels, rs.ious, rs.classes)
    with pytest.raises(ValueError, match="exceeds the 1 classes"):
        RegionSet(rs.image_paths, rs.image_index, rs.boxes, rs.labels, rs.ious, ["car"])


def test_missing_store(tmp_path):
    with pytest.raises(RegionStoreError, match="meta.json not found: .* is not a region store"):
        RegionSet.load(tmp_path)
    make_set().save(tmp_path / "trainval")  # the split asked for is not among those there
    with pytest.raises(RegionStoreError, match="has no split 'train' \\(it has trainval\\)"):
        load_split(tmp_path, "train")


def test_truncated_array_detected(tmp_path):
    make_set().save(tmp_path)
    path = tmp_path / "boxes.npy"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(RegionStoreError, match="boxes.npy: checksum mismatch"):
        RegionSet.load(tmp_path)


def test_array_from_another_run_detected(tmp_path):
    make_set(seed=0).save(tmp_path / "a")
    make_set(seed=1).save(tmp_path / "b")
    (tmp_path / "a" / "labels.npy").write_bytes((tmp_path / "b" / "labels.npy").read_bytes())
    with pytest.raises(RegionStoreError, match="labels.npy: checksum mismatch"):
        RegionSet.load(tmp_path / "a")


def test_damaged_meta_and_wrong_version(tmp_path):
    make_set().save(tmp_path)
    meta = tmp_path / "meta.json"
    text = meta.read_text()
    meta.write_text(text[:30])
    with pytest.raises(RegionStoreError, match="meta.json: not a readable region store"):
        RegionSet.load(tmp_path)
    obj = json.loads(text)
    obj["version"] = 99
    meta.write_text(json.dumps(obj))
    with pytest.raises(RegionStoreError, match="not a version-2 .*run `rcnn prepare` again"):
        RegionSet.load(tmp_path)


def test_missing_array(tmp_path):
    make_set().save(tmp_path)
    (tmp_path / "ious.npy").unlink()
    with pytest.raises(RegionStoreError, match="ious.npy not found"):
        RegionSet.load(tmp_path)


def test_version_1_stores_load_without_ground_truth(tmp_path):
    rs = make_set()
    rs.save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["version"] == 2 and "gt_index" not in meta["arrays"]  # made without details
    meta["version"] = 1
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    old = RegionSet.load(tmp_path)
    assert old.truth is None and len(old) == len(rs)
    with pytest.raises(RegionStoreError, match="run `rcnn prepare` again"):
        old.require_truth("train-svm")


def test_prepared_store_keeps_ground_truth_details(prepared):
    rs = RegionSet.load(prepared / "train")
    truth = rs.require_truth("a test")
    # Every positive overlaps the box gt_index names at its recorded IoU, in its own image.
    positive = np.flatnonzero(rs.labels > 0)
    rows = truth.gt_index[positive]
    assert (rows >= 0).all()
    assert (truth.image[rows] == rs.image_index[positive]).all()
    assert (truth.labels[rows] == rs.labels[positive]).all()
    from torchvision.ops import box_iou

    iou = box_iou(torch.from_numpy(rs.boxes[positive]).float(),
                  torch.from_numpy(truth.boxes[rows]).float()).diagonal().numpy()  # fmt: skip
    np.testing.assert_allclose(iou, rs.ious[positive], rtol=1e-5)
    np.testing.assert_allclose(truth.class_ious[:, 0], rs.ious, rtol=1e-6)  # one class
