"""Tests of the synthetic VOC2007-layout dataset generator."""

from __future__ import annotations

import re
from pathlib import Path
from xml.etree import ElementTree as ET

import cv2
import numpy as np
import pytest

from rcnn.data.annotations import VOC_CLASSES
from rcnn.data.scenes import PLAIN_BACKGROUND, image_rng, render_scene
from rcnn.data.synth import make_synthetic_voc, synth_classes

SIZE = (96, 72)
SEED = 3
N = 40


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("voc")
    return root, make_synthetic_voc(root, N, seed=SEED, image_size=SIZE)


def _ids(path: Path) -> list[str]:
    return path.read_text().split()


def _read_objects(xml_path: Path) -> list[dict]:
    objects = []
    for obj in ET.parse(xml_path).getroot().iter("object"):
        box = obj.find("bndbox")
        objects.append(
            {
                "name": obj.findtext("name"),
                "truncated": int(obj.findtext("truncated")),
                "difficult": int(obj.findtext("difficult")),
                "box": tuple(int(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")),
            }
        )
    return objects


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(0, iw) * max(0, ih)

    def area(r: tuple[int, ...]) -> int:
        return (r[2] - r[0] + 1) * (r[3] - r[1] + 1)

    return inter / (area(a) + area(b) - inter)


def test_layout_and_splits(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    ids = [f"{i:06d}" for i in range(1, N + 1)]
    assert sorted(p.stem for p in (root / "JPEGImages").glob("*.jpg")) == ids
    assert sorted(p.stem for p in (root / "Annotations").glob("*.xml")) == ids
    main = root / "ImageSets" / "Main"
    train, val = _ids(main / "train.txt"), _ids(main / "val.txt")
    assert train == sorted(train) and val == sorted(val)
    assert not set(train) & set(val)
    assert sorted(train + val) == ids == _ids(main / "trainval.txt")
    assert len(val) == round(N * 0.5)
    for split, members in (("train", train), ("val", val), ("trainval", ids)):
        assert [
            line.split()[0] for line in (main / f"car_{split}.txt").read_text().splitlines()
        ] == members
    assert not list(root.rglob("*.tmp")), "atomic writes left temp files behind"
    assert summary["root"] == str(root)
    assert (summary["images"], summary["train"], summary["val"]) == (N, len(train), len(val))


def test_split_keeps_one_image_on_each_side(tmp_path: Path) -> None:
    summary = make_synthetic_voc(tmp_path, 2, image_size=(64, 64), val_fraction=0.9)
    assert (summary["train"], summary["val"]) == (1, 1)


def _all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    first = _all_files(Path(make_synthetic_voc(tmp_path / "a", 6, seed=7, image_size=SIZE)["root"]))
    second = _all_files(
        Path(make_synthetic_voc(tmp_path / "b", 6, seed=7, image_size=SIZE)["root"])
    )
    assert len(first) == 6 * 2 + 6 and first == second
    other = _all_files(Path(make_synthetic_voc(tmp_path / "c", 6, seed=8, image_size=SIZE)["root"]))
    assert other.keys() == first.keys()
    assert any(other[k] != first[k] for k in first if k.startswith("JPEGImages"))
    # An image depends on (seed, index) only, not on how many images the dataset has.
    fewer = _all_files(Path(make_synthetic_voc(tmp_path / "d", 3, seed=7, image_size=SIZE)["root"]))
    assert all(fewer[k] == first[k] for k in fewer if not k.startswith("ImageSets"))


def test_xml_is_voc_and_flags_agree(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    width, height = SIZE
    flags = {}
    counts = {"objects": 0, "difficult": 0, "truncated": 0}
    for xml_path in sorted((root / "Annotations").glob("*.xml")):
        ann = ET.parse(xml_path).getroot()
        assert ann.findtext("folder") == "VOC2007"
        assert ann.findtext("filename") == f"{xml_path.stem}.jpg"
        assert [ann.findtext(f"size/{k}") for k in ("width", "height", "depth")] == [
            str(width),
            str(height),
            "3",
        ]
        image = cv2.imread(str(root / "JPEGImages" / f"{xml_path.stem}.jpg"))
        assert image.shape == (height, width, 3)
        objects = _read_objects(xml_path)
        for obj in objects:
            xmin, ymin, xmax, ymax = obj["box"]
            assert (
                obj["name"] == "car" and obj["truncated"] in (0, 1) and obj["difficult"] in (0, 1)
            )
            assert 1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height, obj
            counts["objects"] += 1
            counts["difficult"] += obj["difficult"]
            counts["truncated"] += obj["truncated"]
        easy = [o for o in objects if not o["difficult"]]
        flags[xml_path.stem] = 1 if easy else (0 if objects else -1)
    assert {k: summary[k] for k in counts} == counts
    main = root / "ImageSets" / "Main"
    for split in ("train", "val", "trainval"):
        for line in (main / f"car_{split}.txt").read_text().splitlines():
            assert re.fullmatch(r"\d{6} ( 1| 0|-1)", line), line
            image_id, flag = line.split()
            assert int(flag) == flags[image_id]


def test_annotations_match_the_rendered_scene(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    for index in (1, 2, 3, 4):
        image, cars = render_scene(image_rng(SEED, index), SIZE)
        objects = _read_objects(root / "Annotations" / f"{index:06d}.xml")
        assert [o["box"] for o in objects] == [(c.xmin, c.ymin, c.xmax, c.ymax) for c in cars]
        jpeg = cv2.imread(str(root / "JPEGImages" / f"{index:06d}.jpg")).astype(int)
        # Same picture up to JPEG loss of its per-pixel noise, and in the same channel order.
        error = np.abs(jpeg - image).mean()
        assert error < 10 and 2 * error < np.abs(jpeg - image[..., ::-1]).mean()


def test_boxes_are_tight_around_drawn_cars() -> None:
    """On a flat background, every car pixel lies in a box and each box edge touches a car."""
    bg = np.array(PLAIN_BACKGROUND)
    checked = 0
    for index in range(1, 16):
        image, cars = render_scene(image_rng(SEED, index), SIZE, plain=True)
        drawn = np.any(image != bg, axis=2)
        inside = np.zeros_like(drawn)
        for car in cars:
            x0, y0, x1, y1 = car.xmin - 1, car.ymin - 1, car.xmax, car.ymax  # 0-based, end excl.
            inside[y0:y1, x0:x1] = True
            region = drawn[y0:y1, x0:x1]
            assert region[0].any() and region[-1].any(), car
            assert region[:, 0].any() and region[:, -1].any(), car
            checked += 1
        assert not (drawn & ~inside).any(), f"car pixels outside every box in scene {index}"
    assert checked >= 10


def test_truncation_and_overlap(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    width, height = SIZE
    truncated_on_border = 0
    for xml_path in (root / "Annotations").glob("*.xml"):
        objects = _read_objects(xml_path)
        for obj in objects:
            xmin, ymin, xmax, ymax = obj["box"]
            on_border = xmin == 1 or ymin == 1 or xmax == width or ymax == height
            if obj["truncated"]:
                truncated_on_border += on_border
            else:
                assert not on_border, (xml_path.name, obj)
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                assert _iou(a["box"], b["box"]) < 0.3, xml_path.name
    assert truncated_on_border > 0


def test_variety_over_many_images(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    per_image = [_read_objects(p) for p in sorted((root / "Annotations").glob("*.xml"))]
    assert summary["truncated"] > 0 and summary["difficult"] > 0
    objects = summary["objects"]
    assert summary["difficult"] < objects / 2 and summary["truncated"] < objects / 2
    assert any(not objects for objects in per_image)
    assert sum(1 for objects in per_image if len(objects) > 1) > 0
    widths = [o["box"][2] - o["box"][0] + 1 for objects in per_image for o in objects]
    assert min(widths) < 0.25 * SIZE[0] and max(widths) > 0.45 * SIZE[0]


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"num_images": 1}, ValueError, "--images must be >= 2"),
        ({"image_size": (48, 96)}, ValueError, "--size must be at least 64x64"),
        ({"image_size": (96, 32)}, ValueError, "--size must be at least 64x64"),
        ({"val_fraction": 0.0}, ValueError, r"val_fraction must be in \(0, 1\)"),
        ({"val_fraction": 1.0}, ValueError, r"val_fraction must be in \(0, 1\)"),
        ({"test_fraction": 0.6}, ValueError, "--test-fraction must be in"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict, error: type, pattern: str) -> None:
    args = {"num_images": 4, "image_size": SIZE} | kwargs
    with pytest.raises(error, match=pattern):
        make_synthetic_voc(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_the_size_is_bounded_by_the_flag_before_anything_is_drawn(tmp_path, capsys) -> None:
    from rcnn.cli import main

    # 20000x20000 took 23 GB before it was killed; the bound is in the help.
    for size in ("4097x64", "64x20000"):
        assert main(["synth", str(tmp_path / "out"), "--images", "2", "--size", size]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines() == [
            f"rcnn synth: error: --size must be at least 64x64 and at most 4096x4096 (got {size})"
        ]
        assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    assert "each side from 64 to 4096" in " ".join(capsys.readouterr().out.split())


def test_refuses_to_overwrite_a_dataset(tmp_path: Path) -> None:
    make_synthetic_voc(tmp_path, 2, image_size=(64, 64))
    before = _all_files(tmp_path)
    with pytest.raises(FileExistsError, match="choose another"):
        make_synthetic_voc(tmp_path, 3, image_size=(64, 64))
    assert _all_files(tmp_path) == before


def test_empty_annotations_folder_is_reused(tmp_path: Path) -> None:
    (tmp_path / "Annotations").mkdir()
    assert make_synthetic_voc(tmp_path, 2, image_size=(64, 64))["images"] == 2


FOUR = ["car", "bus", "bicycle", "person"]


def test_classes_are_drawn_by_shape_with_per_class_flags(tmp_path: Path) -> None:
    summary = make_synthetic_voc(tmp_path / "a", 30, seed=SEED, image_size=(128, 96),
                                 classes=FOUR)  # fmt: skip
    root = tmp_path / "a"
    per_image = {p.stem: _read_objects(p) for p in sorted((root / "Annotations").glob("*.xml"))}
    names = [o["name"] for objects in per_image.values() for o in objects]
    assert sorted(set(names)) == sorted(FOUR)
    assert summary["per_class"] == {c: names.count(c) for c in FOUR}
    main = root / "ImageSets" / "Main"
    for cls in FOUR:  # VOC's flags, per class: 1 shows one, 0 only difficult ones, -1 none
        for line in (main / f"{cls}_trainval.txt").read_text().splitlines():
            image_id, flag = line.split()
            mine = [o for o in per_image[image_id] if o["name"] == cls]
            expected = 1 if any(not o["difficult"] for o in mine) else (0 if mine else -1)
            assert int(flag) == expected, (cls, line)
    # Shapes, not colours: people stand (taller than wide), buses are long.
    boxes = {c: [o["box"] for objects in per_image.values() for o in objects
                 if o["name"] == c and not o["truncated"]] for c in FOUR}  # fmt: skip
    ratio = {
        c: np.median([(b[3] - b[1] + 1) / (b[2] - b[0] + 1) for b in v]) for c, v in boxes.items()
    }
    assert ratio["person"] > 1.5 and ratio["bus"] < 0.6 and ratio["car"] < 0.7
    # The same seed gives the same bytes; car alone gives what it always gave.
    make_synthetic_voc(tmp_path / "b", 30, seed=SEED, image_size=(128, 96), classes=FOUR)
    assert _all_files(tmp_path / "a") == _all_files(tmp_path / "b")
    make_synthetic_voc(tmp_path / "c", 4, seed=SEED, image_size=(128, 96))
    make_synthetic_voc(tmp_path / "d", 4, seed=SEED, image_size=(128, 96), classes=["car"])
    assert _all_files(tmp_path / "c") == _all_files(tmp_path / "d")


def test_every_class_is_tightly_boxed() -> None:
    """All 20 VOC names: every drawn pixel lies in a box and each box edge touches a pixel."""
    bg = np.array(PLAIN_BACKGROUND)
    seen = set()
    for index in range(1, 40):
        image, objects = render_scene(image_rng(SEED, index), (128, 96), plain=True,
                                       classes=VOC_CLASSES)  # fmt: skip
        drawn = np.any(image != bg, axis=2)
        inside = np.zeros_like(drawn)
        for obj in objects:
            x0, y0, x1, y1 = obj.xmin - 1, obj.ymin - 1, obj.xmax, obj.ymax
            inside[y0:y1, x0:x1] = True
            region = drawn[y0:y1, x0:x1]
            assert region[0].any() and region[-1].any() and region[:, 0].any(), obj
            assert region[:, -1].any(), obj
            seen.add(obj.name)
        assert not (drawn & ~inside).any(), f"object pixels outside every box in scene {index}"
    assert len(seen) >= 15


def test_class_names() -> None:
    assert synth_classes(["voc"]) == tuple(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert synth_classes(["bus", "car"]) == ("bus", "car")
    for bad in (["truck"], ["car", "car"], []):
        with pytest.raises(ValueError, match="--classes"):
            synth_classes(bad)
