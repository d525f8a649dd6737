"""Reader for COCO-format datasets: instances JSON files and the folders of their images.

One file holds one split, as COCO ships them (``annotations/instances_val2017.json`` for the
images of ``val2017/``). Commands take ``--coco FILE --images DIR``; ``{split}`` in either is
replaced by the split's name, so that one pair of flags names several splits. Each file is read
and checked by :func:`rcnn.data.coco_file.load_split`.

Each image is named by its file name without extension, as VOC names its images (by its COCO id
when two file names share a stem); names are unique within a split, so per-split folders may
repeat file names. An image becomes a :class:`~rcnn.data.annotations.VOCAnnotation`, so every stage
reads COCO and VOC data alike:

- a category maps to a class by name (compared as :func:`~rcnn.data.annotations.class_key` does);
- a crowd annotation (``iscrowd: 1``) is treated as VOC treats a difficult object: ignored in
  matching and not counted;
- boxes convert in :func:`rcnn.data.annotations.coco_to_box`, beside VOC's conversions.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from rcnn.data.annotations import VOCAnnotation, class_key
from rcnn.data.coco_file import COCOFormatError, COCOSplit, listed, load_split
from rcnn.errors import ConfigError, RcnnError

__all__ = ["COCODataset", "COCOFormatError", "SPLIT"]

logger = logging.getLogger(__name__)

SPLIT = "{split}"


def coco_image_ids(names: list[str]) -> list[int | str]:
    """COCO image ids for VOC image names: their numbers where every name is a decimal number
    and no two are the same number (``000123`` is 123), else the names. ``rcnn synth --coco``
    and the COCO metrics of a VOC dataset both number images so, and their results agree."""
    if all(n.isascii() and n.isdigit() for n in names):
        numbers = [int(n) for n in names]
        if len(set(numbers)) == len(numbers):
            return numbers
    return list(names)


def _check_overlap(found: COCOSplit, other: COCOSplit) -> None:
    """An image file in two split files (train and trainval) must be annotated alike there."""
    for name in found.names.keys() & other.names.keys():
        here = (found.images / found.annotations[name].filename).resolve()
        there = (other.images / other.annotations[name].filename).resolve()
        if here == there and found.records[name] != other.records[name]:
            raise COCOFormatError(
                f"image {name} is in {other.path} and {found.path} with other annotations: "
                "an image must be annotated once"
            )


class COCODataset:
    """COCO instances files (one a split) and their image folders, read as the VOC reader
    is read (:class:`~rcnn.data.voc.VOCDataset`'s methods)."""

    def __init__(self, annotations: str | Path, images: str | Path):
        self.annotations_arg, self.images_arg = str(annotations), str(images)
        self._splits: dict[str, COCOSplit] = {}
        self._owner: dict[str, str] = {}  # image name -> the split asked for last

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
        """The split's file, read once. Image names are unique within a split only (COCO's
        per-split folders repeat file names): a name stands for the image of the split asked
        for last, as each command works on one split at a time."""
        if split not in self._splits:
            path, images = self.files(split)
            if not images.is_dir():
                raise FileNotFoundError(f"--images {images}: folder not found")
            found = load_split(path, images)
            for other in self._splits.values():
                _check_overlap(found, other)
            self._splits[split] = found
        self._owner.update(dict.fromkeys(self._splits[split].names, split))
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
                f"{listed(sorted(found.categories.values()), 12)}): are the classes for it?"
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
                f"({listed(sorted(known.values()), 12)})"
            )
        others = sorted(n for k, n in known.items() if k not in {class_key(c) for c in classes})
        if others:
            logger.warning("%s: %d categories not in --classes are left out: %s", found.path,
                           len(others), listed(others, 8))  # fmt: skip
        ids = [n for n, a in found.annotations.items() if a.select(classes, keep_difficult=False)]
        if not ids:
            raise COCOFormatError(
                f"{found.path} has no image with a (non-crowd) object of {classes}"
            )
        return ids
