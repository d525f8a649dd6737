"""What every reader gives (:class:`VOCAnnotation`, VOC's and COCO's alike), in the project's
box convention, and the one place where each format's boxes convert to it; what may name a
class, an image or a split.

The project's boxes are 0-based ``x1, y1, x2, y2`` with ``x2, y2`` exclusive, so ``x2 - x1`` is
the width, as the array slice ``image[y1:y2, x1:x2]``. The formats: VOC's 1-based inclusive
pixels (XML annotations and the devkit's result files) and COCO's ``[x, y, width, height]``
(instances and results files).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

import numpy as np

from rcnn.errors import ConfigError, RcnnError

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


class DatasetError(RcnnError):
    """A dataset's file is missing, malformed or inconsistent; the message names the file."""


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


def mat_to_boxes(yxyx: np.ndarray) -> np.ndarray:
    """R-CNN's ``.mat`` proposals, ``[y1 x1 y2 x2]`` 1-based inclusive rows ``[K, 4]`` (as
    MATLAB indexes pixels), as project boxes (float64, unrounded)."""
    yxyx = np.asarray(yxyx, dtype=np.float64).reshape(-1, 4)
    return voc_to_boxes(yxyx[:, [1, 0, 3, 2]])  # VOC's numbering, the axes swapped


def boxes_to_mat(boxes: np.ndarray) -> np.ndarray:
    """Project boxes ``[K, 4]`` as R-CNN's ``[y1 x1 y2 x2]`` 1-based inclusive (float64): the
    inverse of :func:`mat_to_boxes`."""
    return boxes_to_voc(boxes)[:, [1, 0, 3, 2]]


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
