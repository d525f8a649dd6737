"""One COCO instances file, read, checked and indexed (:func:`load_split`); the dataset of
several split files is :class:`rcnn.data.coco.COCODataset`.

The file is read with pycocotools (``COCO``), after checks pycocotools does not make:

- an id used twice, a bool as an id, or image or category ids mixing numbers and strings
  (COCO's evaluation sorts them; images named by their ids would collide) is an error naming
  the file;
- an annotation of an unknown image or category, or whose box, ``iscrowd`` (0 or 1, false or
  true) or ``area`` (a finite number >= 0; computed from the box where missing) is not usable,
  is left out with one warning per kind naming the annotation ids;
- an image without a usable ``width`` and ``height`` is named in a warning; its boxes are not
  clipped to it.

Images are named by their file names without extension, or by their COCO ids when two file
names of the file share a stem. Boxes are clipped to the image: VOC's metrics see them in whole
pixels (:func:`rcnn.data.annotations.coco_to_box`), COCO's unrounded, as COCO's evaluation
reads them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from rcnn.data.annotations import (
    DatasetError,
    VOCAnnotation,
    VOCObject,
    class_key,
    coco_to_box,
    safe_name,
)
from rcnn.files import parse_json, read_regular_file

logger = logging.getLogger(__name__)

COCO_HINT = (
    "expected a COCO instances file: a JSON object with 'images' (id, file_name, width, "
    "height), 'annotations' (id, image_id, category_id, bbox [x, y, w, h], iscrowd) and "
    "'categories' (id, name)"
)


class COCOFormatError(DatasetError):
    """A COCO file is missing, malformed or inconsistent; the message names the file."""


def quiet():
    """Silences pycocotools, which prints its progress to stdout."""
    return contextlib.redirect_stdout(io.StringIO())


def listed(items: list, most: int = 5) -> str:
    """The first ``most`` of ``items``, and how many more."""
    shown = ", ".join(str(i) for i in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


@dataclass
class COCOSplit:
    """One instances file, checked and indexed.

    Attributes:
        coco: the pycocotools index of what was kept (the ground truth of COCO's metrics).
        names: image name -> COCO image id, in file order.
        annotations: image name -> its :class:`VOCAnnotation`.
        categories: category id -> name.
        supercategories: name -> supercategory ('' where the file has none, or not a string).
    """

    path: Path
    images: Path
    coco: object
    names: dict[str, int | str]
    annotations: dict[str, VOCAnnotation]
    categories: dict[int | str, str]
    supercategories: dict[str, str]
    records: dict[str, str]  # image name -> what the file says of it (:func:`_record`)


def _is_id(value) -> bool:
    """Whether ``value`` can be a COCO id: a whole number or a string (a bool is neither)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _ids_once(items: list, kind: str, path: Path, one: str, mixed: bool = False) -> dict:
    """``{id: entry}`` of ``items``; an id used twice, or (unless ``mixed``) numbers and
    strings together, is an error naming the file."""
    found: dict = {}
    for item in items:
        if not isinstance(item, dict) or "id" not in item:
            raise COCOFormatError(f"{path}: an entry of '{kind}' has no 'id'; {COCO_HINT}")
        key = item["id"]
        if not _is_id(key):
            raise COCOFormatError(f"{path}: {one} id {key!r} is not a whole number or a string")
        if key in found:
            raise COCOFormatError(f"{path}: {one} id {key!r} is used twice; ids must be unique")
        found[key] = item
    numbers = [k for k in found if isinstance(k, int)]
    if not mixed and 0 < len(numbers) < len(found):
        text = next(k for k in found if isinstance(k, str))
        # COCO's evaluation sorts them, and images named by their ids would collide (1, "1").
        raise COCOFormatError(
            f"{path}: {one} ids mix numbers ({numbers[0]}) and strings ({text!r}); use one kind"
        )
    return found


def _image_names(images: dict, path: Path) -> dict[int | str, str]:
    """COCO image id -> name: the file name's stem, or the id where stems repeat."""
    stems = {}
    for key, image in images.items():
        name = image.get("file_name")
        if not isinstance(name, str) or not name:
            raise COCOFormatError(f"{path}: image {key!r} has no 'file_name'")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise COCOFormatError(
                f"{path}: image {key!r} has file_name {name!r}, which leaves --images (file "
                "names are relative to it)"
            )
        stems[key] = Path(name).stem
    if len(set(stems.values())) == len(stems) and all(_usable(s) for s in stems.values()):
        return stems
    logger.info("%s: image file names share stems or hold spaces; images are named by their "
                "COCO ids", path)  # fmt: skip
    names = {key: str(key) for key in images}
    bad = [n for n in names.values() if not _usable(n)]
    if bad:
        raise COCOFormatError(f"{path}: image id {bad[0]!r} cannot name a file")
    return names


def _usable(name: str) -> bool:
    """Whether ``name`` can name an image: a file name's part (:func:`safe_name`) without
    spaces, which the devkit's result files separate fields by."""
    return safe_name(name) and not any(c.isspace() for c in name)


def _read(path: Path) -> dict:
    try:
        data = parse_json(read_regular_file(path).decode("utf-8-sig"))
    except FileNotFoundError:
        raise COCOFormatError(f"--coco {path}: file not found; {COCO_HINT}") from None
    except OSError as err:  # a folder, a FIFO, a device
        raise COCOFormatError(f"--coco {path}: not a readable file ({err})") from None
    except ValueError as err:  # not UTF-8, not JSON, nested too deeply
        raise COCOFormatError(f"--coco {path}: not JSON ({err})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise COCOFormatError(f"--coco {path}: {COCO_HINT}")
    return data


def finite_number(value) -> bool:
    """Whether a JSON value is a finite number (a bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sizes(image_table: dict, path: Path) -> dict:
    """COCO image id -> (width, height); (0, 0), said in a warning, where they are not whole
    numbers above 0 (the image's boxes are then not clipped here; `rcnn prepare` clips them
    to the image it reads)."""
    sizes, unusable = {}, []
    for key, image in image_table.items():
        w, h = image.get("width"), image.get("height")
        if all(finite_number(v) and v > 0 and float(v).is_integer() for v in (w, h)):
            sizes[key] = (int(w), int(h))
        else:
            sizes[key] = (0, 0)
            unusable.append(key)
    if unusable:
        logger.warning("%s: %d image(s) without a usable 'width' and 'height' (whole numbers "
                       "above 0), their boxes not clipped to the image: ids %s", path,
                       len(unusable), listed(unusable))  # fmt: skip
    return sizes


def _box(bbox, width: int, height: int) -> tuple[tuple[int, int, int, int], list[float]] | None:
    """A COCO box clipped to the image (when its size is known) in the project convention
    (whole pixels) and as COCO's ``[x, y, w, h]`` (unrounded); None if it is not a positive
    rectangle of finite numbers with pixels inside the image."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(finite_number(v) for v in bbox):
        return None
    x, y, w, h = bbox
    if w <= 0 or h <= 0 or not (math.isfinite(x + w) and math.isfinite(y + h)):
        return None
    x1, y1, x2, y2 = coco_to_box(x, y, w, h)
    if width > 0 and height > 0:
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        # The same clipping unrounded, each value changed only where it is clipped.
        if x < 0:
            x, w = 0, w + x
        if y < 0:
            y, h = 0, h + y
        w, h = min(w, width - x), min(h, height - y)
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2), [float(v) for v in (x, y, w, h)]


# Why an annotation is left out; the first that applies is said.
LEFT_OUT = {
    "unknown image": "name an image id the file does not list",
    "unknown category": "name a category id the file does not list",
    "box": "have a zero-area, negative, non-finite or outside-the-image box",
    "iscrowd": "have an 'iscrowd' other than 0 or 1 (or false or true)",
    "area": "have an 'area' that is not a finite number >= 0",
}


def _problem(ann: dict, image_table: dict, categories: dict, sizes: dict) -> str | None:
    """The key of :data:`LEFT_OUT` that leaves ``ann`` out, or None."""
    if not (_is_id(ann.get("image_id")) and ann["image_id"] in image_table):
        return "unknown image"
    if not (_is_id(ann.get("category_id")) and ann["category_id"] in categories):
        return "unknown category"
    if _box(ann.get("bbox"), *sizes[ann["image_id"]]) is None:
        return "box"
    crowd = ann.get("iscrowd", 0)
    if not isinstance(crowd, (int, bool)) or crowd not in (0, 1):
        return "iscrowd"
    if "area" in ann and not (finite_number(ann["area"]) and ann["area"] >= 0):
        return "area"
    return None


def _annotations(data: dict, image_table: dict, categories: dict, sizes: dict, path: Path):
    """The annotations kept, as pycocotools' ground truth, and each image's objects."""
    kept, objects = [], {key: [] for key in image_table}
    dropped: dict[str, list] = {kind: [] for kind in LEFT_OUT}
    for ann in data["annotations"]:
        problem = _problem(ann, image_table, categories, sizes)
        if problem is not None:
            dropped[problem].append(ann["id"])
            continue
        image_key, crowd = ann["image_id"], int(ann.get("iscrowd", 0))
        box, bbox = _box(ann["bbox"], *sizes[image_key])
        area = float(ann.get("area", bbox[2] * bbox[3]))
        # Numbered 1..N for pycocotools: COCOeval takes a match to annotation id 0 for none,
        # and cannot hold string ids. The file's ids stay in the messages. Both metric
        # families see the box clipped to the image, VOC's in whole pixels.
        kept.append({**ann, "id": len(kept) + 1, "bbox": bbox, "area": area, "iscrowd": crowd})
        name = categories[ann["category_id"]]
        objects[image_key].append(VOCObject(name, box, bool(crowd)))
    for kind, ids in dropped.items():
        if ids:
            logger.warning("%s: %d annotation(s) %s, left out: ids %s", path, len(ids),
                           LEFT_OUT[kind], listed(ids))  # fmt: skip
    return kept, objects


def _record(image: dict, size: tuple[int, int], anns: list[dict], categories: dict,
            supers: dict) -> str:  # fmt: skip
    """What the file says of one image, without the ids that number its entries: a digest
    of it changes when the image or its annotations change, not when others are added."""
    said = [
        [categories[a["category_id"]], supers[categories[a["category_id"]]], a["bbox"],
         a["area"], a["iscrowd"]]
        for a in anns
    ]  # fmt: skip
    return json.dumps([image["file_name"], *size, said])


def load_split(path: Path, images: Path) -> COCOSplit:
    """Reads, checks and indexes one instances file (see the module's notes)."""
    from pycocotools.coco import COCO

    data = _read(path)
    image_table = _ids_once(data["images"], "images", path, "image")
    category_table = _ids_once(data["categories"], "categories", path, "category")
    _ids_once(data["annotations"], "annotations", path, "annotation", mixed=True)
    categories = {}
    for key, cat in category_table.items():
        name = cat.get("name")
        if not isinstance(name, str) or not safe_name(name.strip()):
            raise COCOFormatError(f"{path}: category {key!r} has no usable 'name' ({name!r})")
        categories[key] = name.strip()
    keys = [class_key(n) for n in categories.values()]
    twice = sorted({n for n in keys if keys.count(n) > 1})
    if twice:
        raise COCOFormatError(f"{path}: categories named {twice} twice; names must be unique")
    supers = {}
    for key, cat in category_table.items():
        group = cat.get("supercategory")
        supers[categories[key]] = group if isinstance(group, str) else ""
    names = _image_names(image_table, path)
    sizes = _sizes(image_table, path)
    kept, objects = _annotations(data, image_table, categories, sizes, path)

    coco = COCO()
    coco.dataset = {
        "images": data["images"],
        "annotations": kept,
        "categories": [{"id": k, "name": n} for k, n in categories.items()],
    }
    with quiet():
        coco.createIndex()
    annotations, records, order = {}, {}, {}
    for key, image in image_table.items():
        name = names[key]
        file_name = image["file_name"]
        width, height = sizes[key]
        annotations[name] = VOCAnnotation(name, file_name, width, height, tuple(objects[key]))
        mine = coco.imgToAnns.get(key, [])
        records[name] = _record(image, sizes[key], mine, categories, supers)
        order[name] = key
    return COCOSplit(path, images, coco, order, annotations, categories, supers, records)
