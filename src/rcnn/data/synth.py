"""Deterministic synthetic PASCAL VOC2007-layout datasets of outdoor scenes with objects.

They are the offline demo data and the test data. Objects are drawn by their class's shape
(:mod:`rcnn.data.shapes`: cars by default; buses, bicycles, people, and the 20 VOC class names
as families of shapes). Distractors share the objects' palette and reuse their parts (dark
wheel-like circles, window panes, boxes), so no single cue identifies a class: only the parts
together in their shape do.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
from pathlib import Path
from xml.etree import ElementTree as ET

import cv2
import numpy as np

from rcnn.data.annotations import VOC_CLASSES, VOC_GROUPS, boxes_to_coco, voc_to_box
from rcnn.data.coco import coco_image_ids
from rcnn.data.scenes import SceneObject, image_rng, render_scene
from rcnn.data.shapes import (
    SHAPES,
)
from rcnn.errors import ConfigError
from rcnn.files import atomic_write_bytes

logger = logging.getLogger(__name__)

_MIN_SIZE = 64
_MAX_SIZE = 4096  # drawing one 4096x4096 scene takes 1.8 GB (float textures); 20000x20000, 23 GB


def _annotation_xml(image_id: str, width: int, height: int, objects: list[SceneObject]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for o in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = o.name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(o.truncated))
        ET.SubElement(obj, "difficult").text = str(int(o.difficult))
        box = ET.SubElement(obj, "bndbox")
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            ET.SubElement(box, tag).text = str(getattr(o, tag))
    ET.indent(root, space="\t")
    return (ET.tostring(root, encoding="unicode") + "\n").encode("utf-8")


def _image_flag(objects: list[SceneObject], cls: str) -> int:
    """VOC's flag of an image for a class: 1 it shows one, 0 only difficult ones, -1 none."""
    mine = [o for o in objects if o.name == cls]
    if any(not o.difficult for o in mine):
        return 1
    return 0 if mine else -1


def _write_image_sets(
    main: Path, flags: dict[str, dict[str, int]], n_val: int, n_test: int, seed: int
) -> dict[str, list[str]]:
    """Writes {split}.txt and VOC's {class}_{split}.txt ("000001  1") for train, val, trainval
    and, when ``n_test``, test; ``flags`` is ``{class: {image id: flag}}``. Returns the
    splits' ids."""
    ids = sorted(next(iter(flags.values())))
    order = np.random.Generator(np.random.PCG64([seed, 0])).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    test = sorted(ids[i] for i in order[n_val : n_val + n_test])
    trainval = sorted(set(ids) - set(test))
    splits = {"train": sorted(set(trainval) - set(val)), "val": val, "trainval": trainval}
    if n_test:
        splits["test"] = test
    for name, members in splits.items():
        atomic_write_bytes(main / f"{name}.txt", "".join(f"{i}\n" for i in members).encode())
        for cls, of_class in flags.items():
            lines = "".join(f"{i} {of_class[i]:2d}\n" for i in members)
            atomic_write_bytes(main / f"{cls}_{name}.txt", lines.encode())
    return splits


def _write_coco(
    root: Path,
    splits: dict[str, list[str]],
    objects: dict[str, list[SceneObject]],
    size: tuple[int, int],
    classes,
) -> None:
    """The same dataset as COCO instances files, ``coco/instances_{split}.json``, whose
    images are those of ``JPEGImages/``: image ids are the VOC ids as numbers (as COCO's
    metrics of the VOC files number them, :func:`~rcnn.data.coco.coco_image_ids`), category
    ``k`` is the ``k``-th class (supercategory: its VOC group), difficult objects are crowd."""
    groups = {c: g for g, members in VOC_GROUPS.items() for c in members}
    categories = [{"id": k, "name": c, "supercategory": groups.get(c, c)}
                  for k, c in enumerate(classes, start=1)]  # fmt: skip
    category = {c["name"]: c["id"] for c in categories}
    for name, members in splits.items():
        images, annotations = [], []
        for image_id, key in zip(members, coco_image_ids(members), strict=True):
            images.append({"id": key, "file_name": f"{image_id}.jpg",
                           "width": size[0], "height": size[1]})  # fmt: skip
            for o in objects[image_id]:
                box = voc_to_box(o.xmin, o.ymin, o.xmax, o.ymax)
                x, y, w, h = (int(v) for v in boxes_to_coco(np.array(box))[0])
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": key,
                     "category_id": category[o.name], "bbox": [x, y, w, h], "area": w * h,
                     "iscrowd": int(o.difficult)}
                )  # fmt: skip
        data = {"images": images, "annotations": annotations, "categories": categories}
        path = root / "coco" / f"instances_{name}.json"
        atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def _write_image(job: tuple) -> list[SceneObject]:
    """Renders and writes one image and its annotation; returns its objects."""
    root, image_id, index, seed, (width, height), classes = job
    image, objects = render_scene(image_rng(seed, index), (width, height), classes=classes)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for image {image_id}")
    atomic_write_bytes(root / "JPEGImages" / f"{image_id}.jpg", jpeg.tobytes())
    xml = _annotation_xml(image_id, width, height, objects)
    atomic_write_bytes(root / "Annotations" / f"{image_id}.xml", xml)
    return objects


def synth_classes(names) -> tuple[str, ...]:
    """The classes of a synthetic dataset: names of :data:`rcnn.data.shapes.SHAPES`, or
    ``voc`` (or ``all``) for the 20 VOC classes."""
    names = list(names)
    if names in (["voc"], ["all"]):
        return tuple(VOC_CLASSES)
    unknown = [n for n in names if n not in SHAPES]
    if unknown or not names or len(set(names)) != len(names):
        raise ConfigError(
            f"--classes {' '.join(names)}: give distinct names among {', '.join(SHAPES)}, or "
            "voc for all 20"
        )
    return tuple(names)


def _validate(
    root: Path,
    num_images: int,
    seed: int,
    image_size: tuple[int, int],
    val_fraction: float,
    test_fraction: float,
) -> None:
    if num_images < 2 + (test_fraction > 0):
        raise ConfigError(
            f"--images must be >= 2, or 3 with a test split (got num_images={num_images})"
        )
    if min(image_size) < _MIN_SIZE or max(image_size) > _MAX_SIZE:
        raise ConfigError(
            f"--size must be at least {_MIN_SIZE}x{_MIN_SIZE} and at most {_MAX_SIZE}x{_MAX_SIZE} "
            f"(got {image_size[0]}x{image_size[1]})"
        )
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1) (--val-fraction, got {val_fraction})")
    if not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"--test-fraction must be in [0, 1) and leave room for train next to "
            f"--val-fraction (got {test_fraction} and {val_fraction})"
        )
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0 (got seed={seed})")
    annotations = root / "Annotations"
    if annotations.is_dir() and any(annotations.iterdir()):
        raise FileExistsError(
            f"{annotations} already holds annotations; choose another "
            "output folder or delete it first"
        )


def make_synthetic_voc(
    out: str | Path,
    num_images: int,
    seed: int = 0,
    image_size: tuple[int, int] = (320, 240),
    val_fraction: float = 0.5,
    test_fraction: float = 0.0,
    classes=("car",),
    coco: bool = False,
) -> dict:
    """Writes a synthetic VOC2007-layout dataset under `out`.

    Args:
        out: Dataset root; receives JPEGImages/, Annotations/ and ImageSets/Main/.
        num_images: Number of images (>= 2, so that train and val are both non-empty).
        seed: The same seed gives byte-identical files.
        image_size: (width, height), each from 64 to 4096.
        val_fraction: Share of images in val, in (0, 1).
        test_fraction: Share of images in a test split (0: none, as before), kept out of
            trainval.
        classes: The object classes (see :func:`synth_classes`); each object's class is
            drawn at random among them. Car-only datasets are the same bytes as ever.
        coco: also write the annotations as COCO instances files,
            ``coco/instances_{split}.json`` (images in ``JPEGImages/``).

    Returns:
        {"root", "images", "train", "val", "test", "classes", "objects", "per_class",
        "difficult", "truncated"}.
    """
    root = Path(out)
    classes = synth_classes(classes)
    _validate(root, num_images, seed, image_size, val_fraction, test_fraction)
    width, height = image_size
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"{i:06d}" for i in range(1, num_images + 1)]
    jobs = [
        (root, image_id, index, seed, image_size, classes) for index, image_id in enumerate(ids, 1)
    ]
    # Each image has its own generator, so processes give the same bytes as one loop.
    workers = min(os.cpu_count() or 1, num_images // 200 + 1)
    if workers > 1:
        methods = mp.get_all_start_methods()
        context = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        with context.Pool(workers) as pool:
            written = pool.map(_write_image, jobs, chunksize=32)
    else:
        written = [_write_image(job) for job in jobs]
    flags = {c: {i: _image_flag(objs, c) for i, objs in zip(ids, written, strict=True)}
             for c in classes}  # fmt: skip
    everything = [o for objs in written for o in objs]
    n_test = min(max(round(num_images * test_fraction), 1), num_images - 2) if test_fraction else 0
    n_val = min(max(round(num_images * val_fraction), 1), num_images - n_test - 1)
    splits = _write_image_sets(root / "ImageSets" / "Main", flags, n_val, n_test, seed)
    if coco:
        (root / "coco").mkdir(exist_ok=True)
        _write_coco(root, splits, dict(zip(ids, written, strict=True)), image_size, classes)
    summary = {
        "root": str(out),
        "images": num_images,
        "train": num_images - n_val - n_test,
        "val": n_val,
        "test": n_test,
        "classes": list(classes),
        "objects": len(everything),
        "per_class": {c: sum(o.name == c for o in everything) for c in classes},
        "difficult": sum(o.difficult for o in everything),
        "truncated": sum(o.truncated for o in everything),
    }
    logger.info("wrote synthetic VOC dataset: %s", summary)
    return summary
