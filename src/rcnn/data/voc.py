"""Reader for PASCAL VOC-format datasets.

Expected layout under the VOC root (the folder that holds ``Annotations``)::

    Annotations/{id}.xml
    JPEGImages/{id}.jpg
    ImageSets/Main/{split}.txt            one image id per line
    ImageSets/Main/{class}_{split}.txt    "{id} {flag}": 1 present, 0 only difficult, -1 absent

Annotations become :class:`~rcnn.data.annotations.VOCAnnotation`; VOC's 1-based inclusive
boxes convert in :func:`~rcnn.data.annotations.voc_to_box`.
"""

from __future__ import annotations

import hashlib
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

from rcnn.data.annotations import (
    VOC_CLASSES,
    VOC_GROUPS,
    DatasetError,
    VOCAnnotation,
    VOCObject,
    class_key,
    safe_name,
    voc_to_box,
)
from rcnn.errors import ConfigError
from rcnn.files import read_regular_file

logger = logging.getLogger(__name__)

LAYOUT_HINT = (
    "expected a VOC layout: Annotations/{id}.xml, JPEGImages/{id}.jpg, "
    "ImageSets/Main/{split}.txt (`rcnn synth DIR --test-fraction 0.25` writes an example "
    "with train, val and test splits)"
)


class VOCFormatError(DatasetError):
    """A VOC file is missing, malformed or inconsistent; the message names the file."""


def check_image_id(image_id) -> str:
    """``image_id``, or a :class:`~rcnn.errors.ConfigError` when it is not a file name's part
    (an id such as ``../../etc/passwd`` would reach outside the dataset)."""
    if not isinstance(image_id, str) or not safe_name(image_id):
        raise ConfigError(
            f"{image_id!r} is not an image id of a VOC dataset (ids are file names without "
            "their extension: no '/', '\\', control characters or leading '.')"
        )
    return image_id


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
        return self.root / "Annotations" / f"{check_image_id(image_id)}.xml"

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
        return self.root / "JPEGImages" / f"{check_image_id(image_id)}.jpg"

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
