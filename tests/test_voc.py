import pytest

from rcnn.data.annotations import _WARNED, VOC_CLASSES, resolve_classes, voc_to_box
from rcnn.data.voc import VOCDataset, VOCFormatError, parse_annotation, read_id_file
from rcnn.errors import ConfigError
from tests.helpers import write_xml


def test_voc_to_box_is_zero_based_exclusive():
    # VOC pixel 1..10 inclusive is ten pixels: indices 0..9, exclusive end 10.
    assert voc_to_box(1, 1, 10, 20) == (0, 0, 10, 20)
    assert voc_to_box("48.6", "240", "195", "371") == (48, 239, 195, 371)


def test_parse_one_object(tmp_path):
    path = tmp_path / "a.xml"
    write_xml(path, "a.jpg", (500, 333), [("car", (141, 50, 500, 330), False)])
    ann = parse_annotation(path)
    assert (ann.image_id, ann.width, ann.height) == ("a", 500, 333)
    assert len(ann.objects) == 1
    obj = ann.objects[0]
    assert (obj.name, obj.box, obj.difficult, obj.truncated) == (
        "car",
        (140, 49, 500, 330),
        False,
        False,
    )


def test_parse_several_and_difficult(tmp_path):
    path = tmp_path / "b.xml"
    objects = [
        ("car", (1, 1, 10, 10), False),
        ("dog", (5, 5, 20, 20), False),
        ("car", (30, 30, 40, 40), True),
    ]
    write_xml(path, "b.jpg", (64, 64), objects)
    ann = parse_annotation(path)
    assert [o.name for o in ann.objects] == ["car", "dog", "car"]
    assert [o.difficult for o in ann.objects] == [False, False, True]
    assert [o.box for o in ann.select(["car"], keep_difficult=False)] == [(0, 0, 10, 10)]
    assert len(ann.select(["car"], keep_difficult=True)) == 2


def test_parse_no_objects(tmp_path):
    path = tmp_path / "c.xml"
    write_xml(path, "c.jpg", (64, 64), [])
    assert parse_annotation(path).objects == ()


def test_malformed_xml_names_file(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text("<annotation><object>")
    with pytest.raises(VOCFormatError, match="bad.xml: malformed XML"):
        parse_annotation(path)


def test_missing_xml_names_file(tmp_path):
    with pytest.raises(VOCFormatError, match="nope.xml: annotation not found"):
        parse_annotation(tmp_path / "nope.xml")


def test_empty_box_is_an_error(tmp_path):
    path = tmp_path / "e.xml"
    write_xml(path, "e.jpg", (64, 64), [("car", (20, 5, 10, 30), False)])
    with pytest.raises(VOCFormatError, match=r"e.xml: object 0 \('car'\) has an empty box"):
        parse_annotation(path)


def test_box_outside_image_is_clipped_or_rejected(tmp_path, caplog):
    path = tmp_path / "o.xml"
    write_xml(path, "o.jpg", (64, 48), [("car", (50, 40, 80, 60), False)])
    assert parse_annotation(path).objects[0].box == (49, 39, 64, 48)
    assert "reaches outside" in caplog.text
    write_xml(path, "o.jpg", (64, 48), [("car", (70, 10, 90, 20), False)])
    with pytest.raises(VOCFormatError, match="empty box"):
        parse_annotation(path)


def test_resolve_classes():
    assert resolve_classes(["all"]) == list(VOC_CLASSES)
    assert resolve_classes(["car", "bus"]) == ["car", "bus"]
    with pytest.raises(ValueError, match="--classes has duplicates"):
        resolve_classes(["car", "car"])
    with pytest.raises(ValueError, match="background"):
        resolve_classes(["background"])


def test_select_images_from_class_files(small_voc):
    voc = VOCDataset(small_voc)
    # 000004 has only a dog: flag -1 for car.
    assert voc.select_images("train", ["car"]) == ["000001", "000002", "000003"]


def test_select_images_from_xml_without_class_files(small_voc):
    for f in (small_voc / "ImageSets" / "Main").glob("car_*.txt"):
        f.unlink()
    voc = VOCDataset(small_voc)
    assert voc.select_images("train", ["car"]) == ["000001", "000002", "000003"]
    assert voc.select_images("train", ["dog"]) == ["000002", "000004"]
    assert voc.select_images("train", ["car", "dog"]) == ["000001", "000002", "000003", "000004"]


def test_only_difficult_image_not_selected(make_voc):
    root = make_voc(
        [
            ("1", "train", [("car", (5, 5, 30, 30), True)]),
            ("2", "train", [("car", (5, 5, 30, 30), False)]),
        ]
    )
    assert VOCDataset(root).select_images("train", ["car"]) == ["2"]


def test_unknown_class(small_voc):
    with pytest.raises(ValueError, match=r"--classes: unknown class \['zebra-car'\]"):
        VOCDataset(small_voc).select_images("train", ["zebra-car"])


def test_missing_folders_and_split_files(small_voc, tmp_path):
    with pytest.raises(FileNotFoundError, match="Annotations not found; expected a VOC layout"):
        VOCDataset(tmp_path / "nowhere")
    voc = VOCDataset(small_voc)
    with pytest.raises(FileNotFoundError, match="test.txt not found"):
        voc.select_images("test", ["car"])


def test_empty_split(small_voc):
    main = small_voc / "ImageSets" / "Main"
    (main / "car_val.txt").write_text("000005 -1\n000006 -1\n")
    with pytest.raises(VOCFormatError, match="split 'val' .* has no image.*read .*car_val.txt"):
        VOCDataset(small_voc).select_images("val", ["car"])


def test_malformed_class_file(small_voc):
    (small_voc / "ImageSets" / "Main" / "car_val.txt").write_text("000005 yes\n")
    with pytest.raises(VOCFormatError, match=r"car_val.txt:1: expected"):
        VOCDataset(small_voc).select_images("val", ["car"])


def test_split_files_with_bom_and_crlf(small_voc):
    main = small_voc / "ImageSets" / "Main"
    (main / "train.txt").write_bytes(b"\xef\xbb\xbf000001\r\n000002\r\n000003\r\n")
    (main / "car_train.txt").write_bytes(b"\xef\xbb\xbf000001  1\r\n000002 -1\r\n")
    voc = VOCDataset(small_voc)
    assert voc.select_images("train", ["car"]) == ["000001"]
    (main / "car_train.txt").unlink()
    assert voc.select_images("train", ["car"]) == ["000001", "000002", "000003"]


@pytest.mark.parametrize("spelling", ["Car", " CAR "])
def test_class_names_compare_trimmed_and_case_insensitively(make_voc, spelling, caplog):
    root = make_voc(
        [("1", "train", [(spelling, (5, 5, 30, 30), False), ("dog", (40, 5, 60, 30), False)])],
        class_files=(),
    )
    ann = parse_annotation(root / "Annotations" / "1.xml")
    _WARNED.clear()  # each spelling is reported once a process
    assert [o.name for o in ann.select(["car"], keep_difficult=False)] == ["car"]
    assert f"class name {spelling.strip()!r}" in caplog.text and "read as 'car'" in caplog.text
    assert VOCDataset(root).select_images("train", ["car"]) == ["1"]
    assert VOCDataset(root).select_images("train", ["Car"]) == ["1"]
    with pytest.raises(ValueError, match="duplicates"):
        resolve_classes(["car", "Car"])


def test_each_spelling_is_reported_once(make_voc, caplog):
    specs = [(str(i), "train", [("Car", (5, 5, 30, 30), False)]) for i in (1, 2, 3)]
    root = make_voc(specs, class_files=())
    _WARNED.clear()
    for i in (1, 2, 3):
        parse_annotation(root / "Annotations" / f"{i}.xml").select(["car"], False)
    assert caplog.text.count("class name 'Car'") == 1


@pytest.mark.parametrize("bad", ["sub/a1", "/etc/passwd", "..", "../x", ".hidden", "a\\b"])
def test_ids_that_name_other_files_are_refused(small_voc, bad):
    main = small_voc / "ImageSets" / "Main"
    with (main / "val.txt").open("a") as f:
        f.write(f"{bad}\n")
    with pytest.raises(VOCFormatError, match=r"val.txt:3: .* is not an image id"):
        read_id_file(main / "val.txt")
    (main / "car_val.txt").write_text(f"000005  1\n{bad}  1\n")
    with pytest.raises(VOCFormatError, match=r"car_val.txt:2: .* is not an image id"):
        VOCDataset(small_voc).select_images("val", ["car"])


def test_an_image_listed_twice_is_an_error(small_voc):
    main = small_voc / "ImageSets" / "Main"
    (main / "val.txt").write_text("000005\n000006\n000005\n")
    with pytest.raises(VOCFormatError, match=r"val.txt:3: image 000005 is listed twice"):
        read_id_file(main / "val.txt")
    (main / "car_val.txt").write_text("000005  1\n000005 -1\n")
    with pytest.raises(VOCFormatError, match="listed twice"):
        VOCDataset(small_voc).select_images("val", ["car"])


@pytest.mark.parametrize("name", ["../../x/notes", "a/b", ".car", "", "tab\tcar", "x\\y"])
def test_class_names_that_cannot_be_file_names_are_refused(name):
    from rcnn.data.annotations import check_class_names

    with pytest.raises(ConfigError, match="not a usable class name"):
        resolve_classes(["car", name])
    with pytest.raises(ConfigError, match="best.pt: .* not a usable class name"):
        check_class_names(["car", name], "best.pt")
    assert check_class_names(["traffic light", "Car"], "x") == ["traffic light", "Car"]


def test_each_annotation_is_read_once(make_voc, caplog):
    # Without class files the selection reads every XML; its warnings are not given twice.
    root = make_voc([("a", "train", [("car", (10, 10, 50, 40), False)])], class_files=())
    path = root / "Annotations" / "a.xml"
    write_xml(path, "a.jpg", (96, 72), [("car", (11, 11, 120, 40), False)])
    voc = VOCDataset(root)
    with caplog.at_level("WARNING"):
        assert voc.select_images("train", ["car"]) == ["a"]
        assert voc.annotation("a").objects[0].box == (10, 10, 96, 40)
    assert caplog.text.count("reaches outside") == 1
