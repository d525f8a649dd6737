"""Reader for PASCAL VOC-format datasets.

Expected layout under the VOC root (the folder that holds ``Annotations``)::

    Annotations/{id}.xml
    JPEGImages/{id}.jpg
    ImageSets/Main/{split}.txt            one image id per line
    ImageSets/Main/{class}_{split}.txt    "{id} {flag}": 1 present, 0 only difficult, -1 absent

This module is the only place that knows the datasets' box conventions: VOC's 1-based
inclusive pixels (the XML annotations and the devkit's detection result files) and COCO's
``[x, y, width, height]`` (:mod:`rcnn.data.coco` and COCO results files). The project's boxes
are 0-based ``x1, y1, x2, y2`` with ``x2, y2`` exclusive, so ``x2 - x1`` is the width.
"""

from __future__ import annotations

import hashlib
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rcnn.errors import ConfigError, RcnnError
from rcnn.files import read_regular_file

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# Hoiem, Chodpathumwan and Dai's groups of similar VOC classes ("Diagnosing error in object
# detectors", ECCV 2012), which the R-CNN paper's analysis of false positives uses.
VOC_GROUPS = {
    "animals": ("bird", "cat", "cow", "dog", "horse", "sheep"),
    "vehicles": ("aeroplane", "bicycle", "boat", "bus", "car", "motorbike", "train"),
    "furniture": ("chair", "diningtable", "sofa"),
}

LAYOUT_HINT = (
    "expected a VOC layout: Annotations/{id}.xml, JPEGImages/{id}.jpg, "
    "ImageSets/Main/{split}.txt (try `rcnn synth DIR` for an example)"
)


class VOCFormatError(RcnnError):
    """A VOC file is missing, malformed or inconsistent; the message names the file."""


@dataclass(frozen=True)
class VOCObject:
    name: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2; 0-based, x2/y2 exclusive
    difficult: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class VOCAnnotation:
    image_id: str
    filename: str
    width: int  # 0 when the XML has no usable <size>
    height: int
    objects: tuple[VOCObject, ...]

    def select(self, classes: list[str], keep_difficult: bool) -> list[VOCObject]:
        """Objects of the given classes, without difficult ones unless ``keep_difficult``.

        Names are compared by :func:`class_key`; a returned object carries the spelling of
        ``classes`` (a warning names each other spelling, once).
        """
        wanted = {class_key(c): c for c in classes}
        chosen = []
        for o in self.objects:
            name = wanted.get(class_key(o.name))
            if name is None or (o.difficult and not keep_difficult):
                continue
            if o.name != name:
                _warn_spelling(o.name, name, self.image_id)
                o = replace(o, name=name)
            chosen.append(o)
        return chosen


_WARNED: set[tuple[str, str]] = set()


def class_key(name: str) -> str:
    """How class names are compared: trimmed and case-insensitively (``' Car'`` is ``car``)."""
    return name.strip().lower()


def _warn_spelling(found: str, name: str, image_id: str) -> None:
    if (found, name) in _WARNED:
        return  # once a process for each spelling
    _WARNED.add((found, name))
    logger.warning(
        "class name %r (first seen in %s.xml) read as %r: names are compared trimmed and "
        "case-insensitively",
        found,
        image_id,
        name,
    )


def voc_to_box(xmin: float, ymin: float, xmax: float, ymax: float) -> tuple[int, int, int, int]:
    """Converts a VOC box to the project convention.

    VOC pixels are numbered from 1 and ``xmax``/``ymax`` are the last pixel inside the box, so
    pixel column ``xmin`` is index ``xmin - 1`` and the exclusive end index is ``xmax`` itself.
    Some VOC files hold fractional coordinates; they are rounded first.
    """
    xmin, ymin, xmax, ymax = (int(round(float(v))) for v in (xmin, ymin, xmax, ymax))
    return xmin - 1, ymin - 1, xmax, ymax


def boxes_to_voc(boxes: np.ndarray) -> np.ndarray:
    """Project boxes ``[N, 4]`` as VOC's 1-based inclusive ``xmin, ymin, xmax, ymax`` (float64):
    the inverse of :func:`voc_to_box`, for the devkit's result files. Fractional boxes (after
    box regression) stay fractional."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return boxes + np.array([1.0, 1.0, 0.0, 0.0])


def voc_to_boxes(voc_boxes: np.ndarray) -> np.ndarray:
    """VOC ``xmin, ymin, xmax, ymax`` rows ``[N, 4]`` of a result file as project boxes (float64,
    unrounded: a result file may hold fractional boxes)."""
    voc_boxes = np.asarray(voc_boxes, dtype=np.float64).reshape(-1, 4)
    return voc_boxes - np.array([1.0, 1.0, 0.0, 0.0])


def coco_to_box(x: float, y: float, w: float, h: float) -> tuple[int, int, int, int]:
    """Converts a COCO ``[x, y, width, height]`` box to the project convention.

    COCO's coordinates are continuous, 0 at the outer edge of the first pixel, so a box
    covering pixels ``x .. x + w - 1`` is ``[x, y, w, h]`` and its exclusive end is ``x + w``.
    Fractional boxes (most of COCO's) are rounded to whole pixels, as fractional VOC files are.
    """
    x, y, w, h = (float(v) for v in (x, y, w, h))
    return int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h))


def boxes_to_coco(boxes: np.ndarray) -> np.ndarray:
    """Project boxes ``[N, 4]`` as COCO's ``[x, y, width, height]`` (float64): the inverse of
    :func:`coco_to_box`, for COCO results files and ground truth converted from VOC."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def coco_to_boxes(xywh: np.ndarray) -> np.ndarray:
    """COCO ``[x, y, width, height]`` rows ``[N, 4]`` of a results file as project boxes
    (float64, unrounded)."""
    xywh = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def _text(node: ET.Element, tag: str, path: Path, default: str | None = None) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if default is not None:
            return default
        raise VOCFormatError(f"{path}: missing <{tag}>")
    return child.text.strip()


def _parse_object(node: ET.Element, index: int, width: int, height: int, path: Path) -> VOCObject:
    name = _text(node, "name", path)
    bndbox = node.find("bndbox")
    if bndbox is None:
        raise VOCFormatError(f"{path}: object {index} ('{name}') has no <bndbox>")
    try:
        coords = [float(_text(bndbox, tag, path)) for tag in ("xmin", "ymin", "xmax", "ymax")]
    except ValueError as err:
        raise VOCFormatError(f"{path}: object {index} ('{name}'): bad coordinate ({err})") from err
    x1, y1, x2, y2 = voc_to_box(*coords)
    if width > 0 and height > 0:
        cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            logger.warning(
                "%s: object %d ('%s') box %s reaches outside the %dx%d image; clipped",
                path,
                index,
                name,
                coords,
                width,
                height,
            )
        x1, y1, x2, y2 = cx1, cy1, cx2, cy2
    if x2 <= x1 or y2 <= y1:
        raise VOCFormatError(
            f"{path}: object {index} ('{name}') has an empty box {coords} "
            f"(VOC boxes are 1-based with xmin <= xmax, inside the {width}x{height} image)"
        )
    difficult = _text(node, "difficult", path, default="0") == "1"
    truncated = _text(node, "truncated", path, default="0") == "1"
    return VOCObject(name, (x1, y1, x2, y2), difficult, truncated)


def parse_annotation(path: str | Path) -> VOCAnnotation:
    """Parses one VOC XML file.

    Raises:
        VOCFormatError: the file is missing, not XML, or has a bad object; the message names it.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError as err:
        raise VOCFormatError(f"{path}: annotation not found; {LAYOUT_HINT}") from err
    except ET.ParseError as err:
        raise VOCFormatError(f"{path}: malformed XML ({err})") from err
    size = root.find("size")
    try:
        width = int(float(_text(size, "width", path))) if size is not None else 0
        height = int(float(_text(size, "height", path))) if size is not None else 0
    except (ValueError, VOCFormatError):
        width = height = 0
    objects = tuple(
        _parse_object(node, i, width, height, path) for i, node in enumerate(root.iter("object"))
    )
    filename = _text(root, "filename", path, default=f"{path.stem}.jpg")
    return VOCAnnotation(path.stem, filename, width, height, objects)


# What may name a class or an image: it becomes part of file names (result files, per-image
# detections), so no path separator, no control character, and no leading dot ("..").
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")


def safe_name(name: str) -> bool:
    """Whether ``name`` can be a file name's part as it is: not empty, no ``/`` or ``\\``, no
    control character, not starting with a dot."""
    return bool(name) and not name.startswith(".") and not _UNSAFE.search(name)


def check_split_name(split, flag: str = "--split") -> str:
    """``split``, or a :class:`~rcnn.errors.ConfigError` naming ``flag`` when it cannot be
    part of a file name as it is (``comp4_det_{split}_car.txt``, ``eval-{split}/``, a store's
    folder): no '/', '\\', control character, space or leading '.'."""
    if not isinstance(split, str) or not safe_name(split) or any(c.isspace() for c in split):
        raise ConfigError(
            f"{flag} {split!r} is not a split name (split names become parts of file names: "
            "no '/', '\\', spaces, control characters or leading '.')"
        )
    return split


def check_class_names(names, source: str) -> list[str]:
    """``names`` as a list, or a :class:`~rcnn.errors.ConfigError` naming ``source`` (a flag or
    a file) when one of them is not a usable class name (see :func:`safe_name`)."""
    names = list(names)
    bad = [n for n in names if not isinstance(n, str) or not safe_name(n.strip())]
    if bad:
        raise ConfigError(
            f"{source}: {bad[0]!r} is not a usable class name (class names become parts of "
            "file names: no '/', '\\', control characters or leading '.')"
        )
    return names


def resolve_classes(names: list[str]) -> list[str]:
    """Expands ``["all"]`` to the 20 VOC classes and rejects duplicates, empty lists and names
    that cannot be part of a file name."""
    if names == ["all"]:
        return list(VOC_CLASSES)
    if not names:
        raise ConfigError("--classes must name at least one class (or 'all')")
    check_class_names(names, "--classes")
    if len({class_key(n) for n in names}) != len(names):
        raise ConfigError(f"--classes has duplicates: {names}")
    if "background" in names or "__background__" in names:
        raise ConfigError("--classes must not name 'background': label 0 is always background")
    return list(names)


def read_lines(path: Path) -> list[str]:
    """A text file's lines, with a UTF-8 byte-order mark and Windows line ends read as well."""
    return path.read_text(encoding="utf-8-sig").splitlines()


def _image_id(value: str, path: Path, lineno: int) -> str:
    """An image id as read from a split file; one that is not a plain file name (``sub/a1``,
    ``/abs``, ``..``) would reach outside the VOC root, and is an error naming the line."""
    if not safe_name(value):
        raise VOCFormatError(
            f"{path}:{lineno}: {value!r} is not an image id (ids name files in JPEGImages/ "
            "and Annotations/: no '/', '\\' or leading '.')"
        )
    return value


def _once(path: Path, seen: dict[str, int], image_id: str, lineno: int) -> None:
    if image_id in seen:
        raise VOCFormatError(
            f"{path}:{lineno}: image {image_id} is listed twice (first on line "
            f"{seen[image_id]}); each image must appear once"
        )
    seen[image_id] = lineno


def read_id_file(path: Path) -> list[str]:
    """Image ids from an ``ImageSets/Main/{split}.txt`` file, each once."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {LAYOUT_HINT}")
    seen: dict[str, int] = {}
    for lineno, line in enumerate(read_lines(path), start=1):
        if line.strip():
            _once(path, seen, _image_id(line.split()[0], path, lineno), lineno)
    return list(seen)


def read_class_flags(path: Path) -> dict[str, int]:
    """``{id: flag}`` from an ``ImageSets/Main/{class}_{split}.txt`` file, each id once."""
    flags, seen = {}, {}
    for lineno, line in enumerate(read_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("1", "0", "-1"):
            raise VOCFormatError(f"{path}:{lineno}: expected '<id> <1|0|-1>', got {line!r}")
        image_id = _image_id(parts[0], path, lineno)
        _once(path, seen, image_id, lineno)
        flags[image_id] = int(parts[1])
    return flags


class VOCDataset:
    """One VOC root: file locations, split ids and image selection."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            if not (self.root / sub).is_dir():
                raise FileNotFoundError(f"{self.root / sub} not found; {LAYOUT_HINT}")
        self._parsed: dict[str, VOCAnnotation | VOCFormatError] = {}

    def annotation_path(self, image_id: str) -> Path:
        return self.root / "Annotations" / f"{image_id}.xml"

    def annotation(self, image_id: str) -> VOCAnnotation:
        """The parsed annotation of an image, read once (its warnings are given once).

        Raises:
            VOCFormatError: the file is missing or malformed (every time it is asked for).
        """
        if image_id not in self._parsed:
            try:
                self._parsed[image_id] = parse_annotation(self.annotation_path(image_id))
            except VOCFormatError as err:
                self._parsed[image_id] = err
        found = self._parsed[image_id]
        if isinstance(found, VOCFormatError):
            raise found
        return found

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def ids(self, split: str) -> list[str]:
        """Every image id of ``{split}.txt``, each once."""
        return read_id_file(self.split_path(split))

    def describe(self, split: str) -> str:
        """The split, for messages: its ``{split}.txt``."""
        return str(self.split_path(split))

    def annotation_digest(self, image_id: str) -> str:
        """A digest of the image's XML file ("unreadable" if it cannot be read)."""
        try:
            data = read_regular_file(self.annotation_path(image_id))
        except OSError:
            return "unreadable"
        return hashlib.sha256(data).hexdigest()[:32]

    def settings(self) -> dict:
        """Where the dataset is, as the settings of a run record it."""
        return {"voc_root": str(self.root.resolve())}

    def groups(self, split: str) -> dict[str, tuple[str, ...]]:
        """Hoiem et al.'s groups of similar VOC classes (the false-positive analysis)."""
        return VOC_GROUPS

    def split_path(self, split: str, cls: str | None = None) -> Path:
        """``{split}.txt``, or ``{cls}_{split}.txt`` (VOC's lower-case name if only that exists)."""
        folder = self.root / "ImageSets" / "Main"
        if not cls:
            return folder / f"{split}.txt"
        path, lower = folder / f"{cls}_{split}.txt", folder / f"{class_key(cls)}_{split}.txt"
        return lower if not path.is_file() and lower.is_file() else path

    def select_images(self, split: str, classes: list[str]) -> list[str]:
        """Ids of the split's images that show at least one chosen class.

        As in the reference recipe, an image is chosen when its ``{class}_{split}.txt`` flag is 1
        for any chosen class. Where those files are absent, ``{split}.txt`` is read and an image
        is chosen when its XML has a non-difficult object of a chosen class (the same rule).
        """
        flag_paths = [self.split_path(split, c) for c in classes]
        if all(p.is_file() for p in flag_paths):
            chosen: set[str] = set()
            for p in flag_paths:
                chosen.update(i for i, flag in read_class_flags(p).items() if flag == 1)
            ids = sorted(chosen)
            read = ", ".join(str(p) for p in flag_paths)
        else:
            ids = self._select_from_xml(split, classes)
            read = f"{self.split_path(split)} and the annotations it lists"
        if not ids:
            raise VOCFormatError(
                f"split '{split}' of {self.root} has no image with a (non-difficult) "
                f"object of {classes}; read {read}; check --classes"
            )
        return ids

    def _select_from_xml(self, split: str, classes: list[str]) -> list[str]:
        ids, seen_names = [], set()
        for image_id in self.ids(split):
            try:
                ann = self.annotation(image_id)
            except VOCFormatError as err:
                # Keep it: prepare reports and skips it with the same message.
                logger.debug("selection: %s", err)
                ids.append(image_id)
                continue
            seen_names.update(o.name for o in ann.objects)
            if ann.select(classes, keep_difficult=False):
                ids.append(image_id)
        seen = {class_key(n) for n in seen_names}
        unknown = [
            c for c in classes if class_key(c) not in seen and class_key(c) not in VOC_CLASSES
        ]
        if unknown:
            raise ConfigError(
                f"--classes: unknown class {unknown}: not a VOC class and not in any annotation "
                f"of split '{split}' (names found: {sorted(seen_names)})"
            )
        return ids
