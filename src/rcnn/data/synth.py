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
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from xml.etree import ElementTree as ET

import cv2
import numpy as np

from rcnn.data.annotations import VOC_CLASSES, VOC_GROUPS, boxes_to_coco, voc_to_box
from rcnn.data.coco import coco_image_ids
from rcnn.data.shapes import (
    SHAPES,
    Layer,
    Shape,
    draw_wheel,
    glass_color,
    palette_color,
)
from rcnn.errors import ConfigError
from rcnn.files import atomic_write_bytes

logger = logging.getLogger(__name__)

_PLAIN_BACKGROUND = (255, 0, 255)  # used by tests only; no object part is pure magenta
_MIN_SIZE = 64
_MAX_SIZE = 4096  # drawing one 4096x4096 scene takes 1.8 GB (float textures); 20000x20000, 23 GB


class _Drawn(NamedTuple):
    name: str
    layer: Layer
    truncated: bool
    small: bool


@dataclass(frozen=True)
class _Object:
    """An object annotation with a VOC box (1-based, inclusive)."""

    name: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int
    truncated: bool
    difficult: bool


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    small = rng.normal(0.0, 1.0, (cells, cells, 3)).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _add_pattern(rng: np.random.Generator, img: np.ndarray, horizon: int) -> None:
    """Overlays stripes or tiles on the sky, the ground or everything, in place."""
    height, width = img.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(6, 24)
    if rng.random() < 0.5:
        theta = rng.uniform(0, np.pi)
        pattern = ((xx * np.cos(theta) + yy * np.sin(theta)) / period) % 1.0 < 0.5
    else:
        pattern = ((xx // period) + (yy // period)) % 2 == 0
    region = [slice(0, horizon), slice(horizon, height), slice(0, height)][int(rng.integers(3))]
    tint = rng.uniform(-30, 30, 3).astype(np.float32)
    img[region] += pattern[region, :, None] * tint


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Sky gradient over a textured ground band, with an optional road and blotches."""
    horizon = int(height * rng.uniform(0.25, 0.6))
    img = np.empty((height, width, 3), np.float32)
    t = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None, None]
    img[:horizon] = rng.uniform(60, 250, 3) * (1 - t) + rng.uniform(60, 250, 3) * t
    img[horizon:] = rng.uniform(40, 200, 3)
    img += _smooth_noise(rng, width, height, int(rng.integers(3, 8))) * rng.uniform(10, 40)
    if rng.random() < 0.7:
        _add_pattern(rng, img, horizon)
    if rng.random() < 0.7:
        top = int(rng.uniform(horizon, height * 0.85))
        bottom = int(rng.uniform(top + height * 0.1, height * 1.1))
        rows = min(bottom, height) - top
        img[top:bottom] = rng.uniform(50, 120) + rng.normal(0, 6, (rows, width, 1))
        mid, dash = (top + bottom) // 2, int(rng.integers(6, 20))
        for x in range(int(rng.integers(0, dash)), width, 2 * dash):
            img[mid - 1 : mid + 1, x : x + dash] = rng.uniform(180, 240)
    for _ in range(int(rng.integers(1, 5))):
        blotch = Layer.empty(width, height)
        center, axes = rng.uniform(0, [width, height]), rng.uniform(4, width / 4, 2)
        blotch.ellipse(tuple(center), tuple(axes), rng.uniform(0, 180), palette_color(rng))
        alpha = rng.uniform(0.15, 0.45)
        on = blotch.mask > 0
        img[on] = img[on] * (1 - alpha) + blotch.image[on] * alpha
    return np.clip(img, 0, 255).astype(np.uint8)


def _sample_box(
    rng: np.random.Generator, shape: Shape, width: int, height: int
) -> tuple[tuple[float, float, float, float], bool]:
    """Returns an unclipped box (x0, y0, w, h) for an object of ``shape``, on the ground
    unless it flies, and whether it is truncated."""
    w = rng.uniform(*shape.width) * width
    h = w * rng.uniform(*shape.ratio)
    if h > 0.8 * height:  # too tall for the image: smaller, in the same shape
        w, h = w * 0.8 * height / h, 0.8 * height
    # The 1-pixel margin keeps non-truncated objects (and only them) off the image border.
    x0 = rng.uniform(1, width - w - 2)
    low = h + 1 if shape.flies else max(h + 1, 0.45 * height)
    bottom = rng.uniform(low, height - 2)
    truncated = bool(rng.random() < 0.15)
    if truncated:
        side = int(rng.integers(3))
        if side < 2:
            cut = rng.uniform(0.2, 0.45) * w
            x0 = -cut if side == 0 else width - w + cut
        else:
            bottom = height + rng.uniform(0.15, 0.35) * h
    return (x0, bottom - h, w, h), truncated


def _overlap(a: tuple[float, ...], b: tuple[float, ...], width: int, height: int) -> float:
    """Intersection over the smaller in-image area of two (x0, y0, w, h) boxes (bounds IoU)."""
    limits = [width, height, width, height]
    a_ = np.clip([a[0], a[1], a[0] + a[2], a[1] + a[3]], 0, limits)
    b_ = np.clip([b[0], b[1], b[0] + b[2], b[1] + b[3]], 0, limits)
    inter = np.prod(np.clip(np.minimum(a_[2:], b_[2:]) - np.maximum(a_[:2], b_[:2]), 0, None))
    return float(inter / min(np.prod(a_[2:] - a_[:2]), np.prod(b_[2:] - b_[:2])))


def _make_objects(
    rng: np.random.Generator, width: int, height: int, classes: tuple[str, ...]
) -> list[_Drawn]:
    """Draws no object in ~15% of scenes, else 1-3 objects of random classes that barely
    overlap. An object narrower than its class's smallest width plus 3% of the image's is
    small (difficult, as VOC marks small objects)."""
    count = 0 if rng.random() < 0.15 else int(rng.integers(1, 4))
    boxes: list[tuple[float, float, float, float]] = []
    drawn = []
    for _ in range(count):
        # One class draws nothing here: car-only datasets keep the bytes they always had.
        name = classes[0] if len(classes) == 1 else classes[int(rng.integers(len(classes)))]
        shape = SHAPES[name]
        for _attempt in range(20):
            box, truncated = _sample_box(rng, shape, width, height)
            if all(_overlap(box, other, width, height) < 0.3 for other in boxes):
                layer = Layer.empty(width, height)
                shape.draw(layer, rng, box)
                boxes.append(box)
                small = bool(box[2] < (shape.width[0] + 0.03) * width)
                drawn.append(_Drawn(name, layer, truncated, small))
                break
    return drawn


def _draw_distractor(layer: Layer, rng: np.random.Generator, width: int, height: int) -> None:
    """Draws one non-car shape in the car palette, often built from car-like parts."""
    size = rng.uniform(0.08, 0.35) * width
    cx, cy = rng.uniform(0, width), rng.uniform(0.1 * height, height)
    w, h = size, size * rng.uniform(0.4, 1.6)
    x0, y0, color = cx - w / 2, cy - h / 2, palette_color(rng)
    kind = int(rng.integers(7))
    if kind == 0:
        layer.rect(x0, y0, x0 + w, y0 + h, color)
    elif kind == 1:  # rounded rectangle
        r = min(w, h) * 0.25
        layer.rect(x0 + r, y0, x0 + w - r, y0 + h, color)
        layer.rect(x0, y0 + r, x0 + w, y0 + h - r, color)
        for x in (x0 + r, x0 + w - r):
            for y in (y0 + r, y0 + h - r):
                layer.circle((x, y), r, color)
    elif kind == 2:
        layer.circle((cx, cy), w / 2, color)
    elif kind == 3:
        layer.ellipse((cx, cy), (w / 2, h / 2), rng.uniform(0, 180), color)
    elif kind == 4:
        layer.poly([tuple(rng.uniform([x0, y0], [x0 + w, y0 + h])) for _ in range(3)], color)
    elif kind == 5:  # wheel pair without a body
        r, gap = w * rng.uniform(0.1, 0.18), w * rng.uniform(0.5, 0.8)
        for x in (cx - gap / 2, cx + gap / 2):
            draw_wheel(layer, rng, (x, cy), r)
    else:  # building: a box with a grid of window-like panes
        layer.rect(x0, y0, x0 + w, y0 + h, color)
        glass, step = glass_color(rng), max(4.0, w / rng.integers(2, 5))
        for wx in np.arange(x0 + step * 0.2, x0 + w - step * 0.6, step):
            for wy in np.arange(y0 + step * 0.2, y0 + h - step * 0.6, step):
                layer.rect(wx, wy, wx + step * 0.6, wy + step * 0.6, glass)


def _visible_masks(objects: list[np.ndarray], front: list[np.ndarray]) -> list[np.ndarray]:
    """Pixels of each object mask hidden neither by later objects nor by shapes in front."""
    if not objects:
        return []
    hidden = np.any([m > 0 for m in front], axis=0) if front else np.zeros(objects[0].shape, bool)
    visible = []
    for mask in reversed(objects):
        visible.append((mask > 0) & ~hidden)
        hidden = hidden | (mask > 0)
    return visible[::-1]


def _min_visible_fraction(objects: list[np.ndarray], front: list[np.ndarray]) -> float:
    seen = _visible_masks(objects, front)
    fractions = [
        np.count_nonzero(s) / np.count_nonzero(o) for s, o in zip(seen, objects, strict=True)
    ]
    return min(fractions, default=1.0)


def _annotate(obj: _Drawn, visible: np.ndarray) -> _Object:
    """Builds the tight VOC box around the visible pixels of one object."""
    ys, xs = np.nonzero(visible)
    fraction = len(xs) / np.count_nonzero(obj.layer.mask)
    # VOC is 1-based: 0-based pixel column x is VOC column x + 1, on both ends of the box.
    box = (int(v) + 1 for v in (xs.min(), ys.min(), xs.max(), ys.max()))
    difficult = bool(obj.small or fraction < 0.65)
    return _Object(obj.name, *box, truncated=obj.truncated, difficult=difficult)


def _render_scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    plain: bool = False,
    classes: tuple[str, ...] = ("car",),
) -> tuple[np.ndarray, list[_Object]]:
    """Renders one BGR scene and its annotations.

    Args:
        rng: Source of all randomness of this scene.
        size: (width, height).
        plain: Test hook: flat magenta background, no distractors, no blur or noise.
        classes: the classes objects are drawn from.
    """
    width, height = size
    if plain:
        image = np.full((height, width, 3), _PLAIN_BACKGROUND, np.uint8)
    else:
        image = _background(rng, width, height)
    objects = _make_objects(rng, width, height, classes)
    masks = [o.layer.mask for o in objects]
    back: list[Layer] = []
    front: list[Layer] = []
    for _ in range(0 if plain else int(rng.integers(2, 7))):
        layer = Layer.empty(width, height)
        _draw_distractor(layer, rng, width, height)
        # A shape goes in front only if every object stays at least half visible.
        fronted = [f.mask for f in front] + [layer.mask]
        in_front = rng.random() < 0.3 and _min_visible_fraction(masks, fronted) >= 0.5
        (front if in_front else back).append(layer)
    for layer in back + [o.layer for o in objects] + front:
        on = layer.mask > 0
        image[on] = layer.image[on]
    visible = _visible_masks(masks, [f.mask for f in front])
    annotations = [_annotate(o, seen) for o, seen in zip(objects, visible, strict=True)]
    if not plain:
        blurred = cv2.GaussianBlur(image, (3, 3), rng.uniform(0.4, 0.9)).astype(np.float32)
        noisy = blurred + rng.normal(0.0, rng.uniform(2.0, 6.0), image.shape)
        image = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    return image, annotations


def _image_rng(seed: int, index: int) -> np.random.Generator:
    # Per-image streams keep every image independent of num_images; the leading 1 keeps them
    # apart from the split stream [seed, 0].
    return np.random.Generator(np.random.PCG64([seed, 1, index]))


def _annotation_xml(image_id: str, width: int, height: int, objects: list[_Object]) -> bytes:
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


def _image_flag(objects: list[_Object], cls: str) -> int:
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
    objects: dict[str, list[_Object]],
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


def _write_image(job: tuple) -> list[_Object]:
    """Renders and writes one image and its annotation; returns its objects."""
    root, image_id, index, seed, (width, height), classes = job
    image, objects = _render_scene(_image_rng(seed, index), (width, height), classes=classes)
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
