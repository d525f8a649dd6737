"""Reader for COCO-format datasets: an instances JSON file and the folder of its images.

One file holds one split, as COCO ships them (``annotations/instances_val2017.json`` for the
images of ``val2017/``). Commands take ``--coco FILE --images DIR``; ``{split}`` in either is
replaced by the split's name, so that one pair of flags names several splits.

Each image is named by its file name without extension, as VOC names its images, or by its
COCO id when two file names share a stem. An image becomes a
:class:`~rcnn.data.voc.VOCAnnotation`, so every stage reads COCO and VOC data alike:

- a category maps to a class by name (compared as :func:`~rcnn.data.voc.class_key` does);
- a crowd annotation (``iscrowd: 1``) is treated as VOC treats a difficult object: ignored in
  matching and not counted;
- boxes convert in :func:`rcnn.data.voc.coco_to_box`, beside VOC's conversions.

The file is read with pycocotools (``COCO``), after checks pycocotools does not make: an id
used twice is an error naming the file; an annotation of an unknown image or category, or with
a box that is not a positive rectangle, is left out with one warning per kind naming them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from rcnn.data.voc import (
    VOCAnnotation,
    VOCFormatError,
    VOCObject,
    class_key,
    coco_to_box,
    safe_name,
)
from rcnn.errors import ConfigError, RcnnError
from rcnn.files import read_regular_file

logger = logging.getLogger(__name__)

SPLIT = "{split}"
COCO_HINT = (
    "expected a COCO instances file: a JSON object with 'images' (id, file_name, width, "
    "height), 'annotations' (id, image_id, category_id, bbox [x, y, w, h], iscrowd) and "
    "'categories' (id, name)"
)


class COCOFormatError(VOCFormatError):
    """A COCO file is missing, malformed or inconsistent; the message names the file."""


def quiet():
    """Silences pycocotools, which prints its progress to stdout."""
    return contextlib.redirect_stdout(io.StringIO())


def _listed(items: list, most: int = 5) -> str:
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
        supercategories: name -> supercategory ('' where the file has none).
    """

    path: Path
    images: Path
    coco: object
    names: dict[str, int | str]
    annotations: dict[str, VOCAnnotation]
    categories: dict[int | str, str]
    supercategories: dict[str, str]
    records: dict[str, str]  # image name -> JSON of its image and annotations (digests)


def _ids_once(items: list, kind: str, path: Path, one: str) -> dict:
    found: dict = {}
    for item in items:
        if not isinstance(item, dict) or "id" not in item:
            raise COCOFormatError(f"{path}: an entry of '{kind}' has no 'id'; {COCO_HINT}")
        key = item["id"]
        if not isinstance(key, (int, str)) or isinstance(key, bool):
            raise COCOFormatError(f"{path}: '{kind}' id {key!r} is not a number or string")
        if key in found:
            raise COCOFormatError(f"{path}: {one} id {key!r} is used twice; ids must be unique")
        found[key] = item
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
        data = json.loads(read_regular_file(path).decode("utf-8-sig"))
    except FileNotFoundError:
        raise COCOFormatError(f"--coco {path}: file not found; {COCO_HINT}") from None
    except OSError as err:  # a folder, a FIFO, a device
        raise COCOFormatError(f"--coco {path}: not a readable file ({err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise COCOFormatError(f"--coco {path}: not JSON ({err})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise COCOFormatError(f"--coco {path}: {COCO_HINT}")
    return data


def _box(ann: dict, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The annotation's box in the project convention, clipped to the image; None if it is
    not a positive rectangle of finite numbers."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        return None
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
        return None
    if bbox[2] <= 0 or bbox[3] <= 0:
        return None
    x1, y1, x2, y2 = coco_to_box(*bbox)
    if width > 0 and height > 0:
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def load_split(path: Path, images: Path) -> COCOSplit:
    """Reads, checks and indexes one instances file (see the module's notes)."""
    from pycocotools.coco import COCO

    data = _read(path)
    image_table = _ids_once(data["images"], "images", path, "image")
    category_table = _ids_once(data["categories"], "categories", path, "category")
    _ids_once(data["annotations"], "annotations", path, "annotation")
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
    names = _image_names(image_table, path)
    sizes = {}
    for key, image in image_table.items():
        w, h = image.get("width", 0), image.get("height", 0)
        ok = all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in (w, h))
        sizes[key] = (int(w), int(h)) if ok else (0, 0)

    kept, objects = [], {key: [] for key in image_table}
    dropped: dict[str, list] = {"unknown image": [], "unknown category": [], "box": []}
    for ann in data["annotations"]:
        image_key = ann.get("image_id")
        if not isinstance(image_key, (int, str)) or image_key not in image_table:
            dropped["unknown image"].append(ann["id"])
            continue
        category = ann.get("category_id")
        if not isinstance(category, (int, str)) or category not in categories:
            dropped["unknown category"].append(ann["id"])
            continue
        box = _box(ann, *sizes[ann["image_id"]])
        if box is None:
            dropped["box"].append(ann["id"])
            continue
        crowd = bool(ann.get("iscrowd", 0))
        x1, y1, x2, y2 = box
        # Numbered 1..N for pycocotools: COCOeval takes a match to annotation id 0 for none,
        # and cannot hold string ids. The file's ids stay in the messages above.
        ann = {**ann, "id": len(kept) + 1, "iscrowd": int(crowd)}
        ann.setdefault("area", float((x2 - x1) * (y2 - y1)))
        kept.append(ann)
        objects[ann["image_id"]].append(VOCObject(categories[ann["category_id"]], box, crowd))
    reasons = {
        "unknown image": "name an image id the file does not list",
        "unknown category": "name a category id the file does not list",
        "box": "have a zero-area, negative, non-finite or outside-the-image box",
    }
    for kind, ids in dropped.items():
        if ids:
            logger.warning("%s: %d annotation(s) %s, left out: ids %s", path, len(ids),
                           reasons[kind], _listed(ids))  # fmt: skip

    coco = COCO()
    coco.dataset = {**data, "annotations": kept}
    with quiet():
        coco.createIndex()
    annotations, records, order = {}, {}, {}
    for key, image in image_table.items():
        name = names[key]
        file_name = image["file_name"]
        width, height = sizes[key]
        annotations[name] = VOCAnnotation(name, file_name, width, height, tuple(objects[key]))
        mine = coco.imgToAnns.get(key, [])
        cats = [category_table[a["category_id"]] for a in mine]  # names and groups count
        record = [image, mine, [(c["name"], c.get("supercategory")) for c in cats]]
        records[name] = json.dumps(record, sort_keys=True, default=str)
        order[name] = key
    supers = {
        categories[k]: str(c.get("supercategory", "") or "") for k, c in category_table.items()
    }
    return COCOSplit(path, images, coco, order, annotations, categories, supers, records)


class COCODataset:
    """COCO instances files (one a split) and their image folders, read as the VOC reader
    is read (:class:`~rcnn.data.voc.VOCDataset`'s methods)."""

    def __init__(self, annotations: str | Path, images: str | Path):
        self.annotations_arg, self.images_arg = str(annotations), str(images)
        self._splits: dict[str, COCOSplit] = {}
        self._owner: dict[str, str] = {}  # image name -> split it was read from

    def check_splits(self, splits: list[str]) -> None:
        """Several splits need ``{split}`` in ``--coco`` (one file holds one split)."""
        if len(splits) > 1 and SPLIT not in self.annotations_arg:
            raise ConfigError(
                f"--coco {self.annotations_arg} is one file, one split, and --split names "
                f"{len(splits)} ({' '.join(splits)}): put {SPLIT} in --coco (and in --images if "
                "each split has its own folder), e.g. --coco annotations/instances_{split}.json "
                "--images images/{split}"
            )

    def files(self, split: str) -> tuple[Path, Path]:
        return (
            Path(self.annotations_arg.replace(SPLIT, split)),
            Path(self.images_arg.replace(SPLIT, split)),
        )

    def split(self, split: str) -> COCOSplit:
        """The split's file, read once."""
        if split not in self._splits:
            path, images = self.files(split)
            if not images.is_dir():
                raise FileNotFoundError(f"--images {images}: folder not found")
            found = load_split(path, images)
            for name, record in found.records.items():
                other = self._owner.get(name)
                if other is None:
                    continue
                theirs = self._splits[other]
                here = (images / found.annotations[name].filename).resolve()
                there = (theirs.images / theirs.annotations[name].filename).resolve()
                if here != there:
                    raise COCOFormatError(
                        f"image name {name} stands for {there} in {theirs.path} and for {here} "
                        f"in {path}: read the splits in separate runs, or rename one"
                    )
                if record != theirs.records[name]:
                    raise COCOFormatError(
                        f"image {name} is in {theirs.path} and {path} with other annotations: "
                        "an image must be annotated once"
                    )
            self._splits[split] = found
            for name in found.records:
                self._owner.setdefault(name, split)
        return self._splits[split]

    def _of(self, image_id: str) -> COCOSplit:
        split = self._owner.get(image_id)
        if split is None:
            raise COCOFormatError(
                f"image {image_id} is in no COCO file read ({self.annotations_arg})"
            )
        return self._splits[split]

    # The VOC reader's methods -------------------------------------------------------------
    def ids(self, split: str) -> list[str]:
        return list(self.split(split).names)

    def describe(self, split: str) -> str:
        return str(self.files(split)[0])

    def annotation(self, image_id: str) -> VOCAnnotation:
        return self._of(image_id).annotations[image_id]

    def annotation_path(self, image_id: str) -> Path:
        return self._of(image_id).path

    def image_path(self, image_id: str) -> Path:
        found = self._of(image_id)
        return found.images / found.annotations[image_id].filename

    def annotation_digest(self, image_id: str) -> str:
        """A digest of the image's entry and annotations (not of the whole file)."""
        return hashlib.sha256(self._of(image_id).records[image_id].encode()).hexdigest()[:32]

    def settings(self) -> dict:
        return {
            "coco": str(Path(self.annotations_arg).resolve()),
            "images": str(Path(self.images_arg).resolve()),
        }

    def category_ids(self, split: str, classes: list[str]) -> list:
        """The category id of each class, or an error naming those the file lacks."""
        found = self.split(split)
        by_name = {class_key(n): k for k, n in found.categories.items()}
        missing = [c for c in classes if class_key(c) not in by_name]
        if missing:
            raise RcnnError(
                f"{found.path} has no category {missing} (it has "
                f"{_listed(sorted(found.categories.values()), 12)}): are the classes for it?"
            )
        return [by_name[class_key(c)] for c in classes]

    def groups(self, split: str) -> dict[str, tuple[str, ...]]:
        """Classes of one supercategory are similar (the false-positive analysis)."""
        groups: dict[str, list[str]] = {}
        for name, group in self.split(split).supercategories.items():
            if group:
                groups.setdefault(group, []).append(name)
        return {g: tuple(names) for g, names in groups.items() if len(names) > 1}

    def select_images(self, split: str, classes: list[str]) -> list[str]:
        """Images of the split with a (non-crowd) object of a chosen class, in file order."""
        found = self.split(split)
        known = {class_key(n): n for n in found.categories.values()}
        unknown = [c for c in classes if class_key(c) not in known]
        if unknown:
            raise ConfigError(
                f"--classes: {unknown} not among the categories of {found.path} "
                f"({_listed(sorted(known.values()), 12)})"
            )
        others = sorted(n for k, n in known.items() if k not in {class_key(c) for c in classes})
        if others:
            logger.warning("%s: %d categories not in --classes are left out: %s", found.path,
                           len(others), _listed(others, 8))  # fmt: skip
        ids = [n for n, a in found.annotations.items() if a.select(classes, keep_difficult=False)]
        if not ids:
            raise COCOFormatError(
                f"{found.path} has no image with a (non-crowd) object of {classes}"
            )
        return ids
