"""The datasets a command can read: a VOC folder (``--voc-root``) or COCO instances files
(``--coco FILE --images DIR``). Both readers offer the same methods, so the stages never ask
which one they have:

    ids(split)                   every image of the split, in order
    select_images(split, names)  its images with an object of the classes (training)
    annotation(id)               a :class:`~rcnn.data.annotations.VOCAnnotation`
    image_path(id), annotation_path(id), annotation_digest(id)
    describe(split), settings(), groups(split)
"""

from __future__ import annotations

from rcnn.data.coco import COCODataset
from rcnn.data.voc import VOCDataset
from rcnn.errors import ConfigError

Dataset = VOCDataset | COCODataset


def check_source(voc_root: str | None, coco: str | None, images: str | None) -> None:
    """Exactly one dataset: ``--voc-root``, or ``--coco`` with ``--images``."""
    if voc_root and coco:
        raise ConfigError("give --voc-root or --coco, not both")
    if not voc_root and not coco:
        raise ConfigError("the dataset is needed: --voc-root DIR, or --coco FILE --images DIR")
    if coco and not images:
        raise ConfigError(f"--coco {coco} needs --images DIR, the folder of its images")
    if images and not coco:
        raise ConfigError("--images goes with --coco (a VOC folder holds its JPEGImages/)")


def open_dataset(voc_root: str | None, coco: str | None = None, images: str | None = None):
    """The reader of the dataset the flags name (a :class:`VOCDataset` checks its layout now,
    a :class:`COCODataset` reads each split's file when first asked)."""
    check_source(voc_root, coco, images)
    return COCODataset(coco, images) if coco else VOCDataset(voc_root)
