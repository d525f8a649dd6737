"""Deterministic synthetic PASCAL VOC2007-layout dataset of outdoor scenes with cars.

It is the offline demo data and the test data of the car-vs-background region classifier.
Distractors share the car palette and reuse car parts (dark wheel-like circles, window panes,
boxes), so no single cue identifies a car: only body + cabin + windows + wheels together does.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from xml.etree import ElementTree as ET

import cv2
import numpy as np

from rcnn.errors import ConfigError
from rcnn.files import atomic_write_bytes

logger = logging.getLogger(__name__)

Color = tuple[int, int, int]

# fmt: off
# BGR, shared by car bodies and distractors so that colour alone never identifies a car.
PALETTE: tuple[Color, ...] = (
    (40, 40, 200), (35, 35, 35), (225, 225, 225), (200, 90, 30), (40, 160, 40),
    (30, 200, 230), (125, 125, 125), (160, 60, 140), (20, 90, 160), (200, 200, 90),
)
# Lower body of a right-facing car, in (u, v) fractions of the car box (v grows downwards).
_BODY_OUTLINE = (
    (0.0, 0.45), (0.04, 0.38), (0.2, 0.36), (0.75, 0.36), (0.93, 0.42), (1.0, 0.5),
    (1.0, 0.8), (0.97, 0.86), (0.03, 0.86), (0.0, 0.8),
)
# fmt: on
_PLAIN_BACKGROUND: Color = (255, 0, 255)  # used by tests only; no car part is pure magenta
_MIN_SIZE = 64


@dataclass
class _Layer:
    """One object drawn on its own full-size canvas, with the mask of the pixels it covers."""

    image: np.ndarray
    mask: np.ndarray

    @classmethod
    def empty(cls, width: int, height: int) -> _Layer:
        return cls(np.zeros((height, width, 3), np.uint8), np.zeros((height, width), np.uint8))

    def poly(self, points: list[tuple[float, float]], color: Color) -> None:
        pts = [np.round(np.asarray(points)).astype(np.int32)]
        cv2.fillPoly(self.image, pts, color)
        cv2.fillPoly(self.mask, pts, 255)

    def circle(self, center: tuple[float, float], radius: float, color: Color) -> None:
        c, r = (round(center[0]), round(center[1])), max(1, round(radius))
        cv2.circle(self.image, c, r, color, -1)
        cv2.circle(self.mask, c, r, 255, -1)

    def ellipse(
        self, center: tuple[float, float], axes: tuple[float, float], angle: float, color: Color
    ) -> None:
        c = (round(center[0]), round(center[1]))
        ax = (max(1, round(axes[0])), max(1, round(axes[1])))
        cv2.ellipse(self.image, c, ax, angle, 0, 360, color, -1)
        cv2.ellipse(self.mask, c, ax, angle, 0, 360, 255, -1)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], color)


class _DrawnCar(NamedTuple):
    layer: _Layer
    truncated: bool
    small: bool


@dataclass(frozen=True)
class _Car:
    """A car annotation with a VOC box (1-based, inclusive)."""

    xmin: int
    ymin: int
    xmax: int
    ymax: int
    truncated: bool
    difficult: bool


def _jitter(rng: np.random.Generator, color: Color, amount: float = 20) -> Color:
    values = np.clip(np.asarray(color) + rng.uniform(-amount, amount, 3), 0, 254)
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _palette_color(rng: np.random.Generator) -> Color:
    return _jitter(rng, PALETTE[int(rng.integers(len(PALETTE)))])


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
        blotch = _Layer.empty(width, height)
        center, axes = rng.uniform(0, [width, height]), rng.uniform(4, width / 4, 2)
        blotch.ellipse(tuple(center), tuple(axes), rng.uniform(0, 180), _palette_color(rng))
        alpha = rng.uniform(0.15, 0.45)
        on = blotch.mask > 0
        img[on] = img[on] * (1 - alpha) + blotch.image[on] * alpha
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_car(
    layer: _Layer, rng: np.random.Generator, box: tuple[float, float, float, float]
) -> None:
    """Draws a side-view car filling `box` = (x0, y0, w, h), facing left or right."""
    x0, y0, w, h = box
    flip = rng.random() < 0.5

    def p(u: float, v: float) -> tuple[float, float]:
        return x0 + (1 - u if flip else u) * w, y0 + v * h

    def quad(u0: float, u1: float, u2: float, u3: float, top: float, base: float) -> list:
        return [p(u0, base), p(u1, top), p(u2, top), p(u3, base)]

    back, front = rng.uniform(0.15, 0.28), rng.uniform(0.62, 0.78)
    roof_back, roof_front = back + rng.uniform(0.06, 0.12), front - rng.uniform(0.08, 0.16)
    mid, body, glass = (roof_back + roof_front) / 2, _palette_color(rng), _glass_color(rng)
    layer.poly([p(u, v) for u, v in _BODY_OUTLINE], body)
    layer.poly(quad(back, roof_back, roof_front, front, 0.0, 0.42), body)
    layer.poly(
        quad(back + 0.05, roof_back + 0.03, roof_front - 0.03, front - 0.05, 0.07, 0.38), glass
    )
    layer.poly(quad(mid - 0.015, mid - 0.015, mid + 0.015, mid + 0.015, 0.0, 0.42), body)
    if rng.random() < 0.8:
        layer.poly(quad(0.95, 0.95, 1.0, 1.0, 0.48, 0.56), (150, 230, 250))
        layer.poly(quad(0.0, 0.0, 0.04, 0.04, 0.47, 0.55), (30, 30, 210))
    radius = h * rng.uniform(0.17, 0.21)
    for u in (0.2 + rng.uniform(-0.03, 0.03), 0.8 + rng.uniform(-0.03, 0.03)):
        _draw_wheel(layer, rng, p(u, 1.0 - radius / h), radius)


def _glass_color(rng: np.random.Generator) -> Color:
    return _jitter(rng, (225, 190, 150), 25)


def _draw_wheel(
    layer: _Layer, rng: np.random.Generator, center: tuple[float, float], radius: float
) -> None:
    layer.circle(center, radius, _jitter(rng, (30, 30, 30), 12))
    layer.circle(center, radius * 0.45, _jitter(rng, (175, 175, 175), 30))


def _sample_car_box(
    rng: np.random.Generator, width: int, height: int
) -> tuple[tuple[float, float, float, float], bool]:
    """Returns an unclipped car box (x0, y0, w, h) on the ground, and whether it is truncated."""
    w = rng.uniform(0.15, 0.6) * width
    h = min(w * rng.uniform(0.38, 0.55), 0.8 * height)
    # The 1-pixel margin keeps non-truncated cars (and only them) off the image border.
    x0 = rng.uniform(1, width - w - 2)
    bottom = rng.uniform(max(h + 1, 0.45 * height), height - 2)
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


def _make_cars(rng: np.random.Generator, width: int, height: int) -> list[_DrawnCar]:
    """Draws 0 cars in ~15% of scenes, else 1-3 cars that barely overlap."""
    count = 0 if rng.random() < 0.15 else int(rng.integers(1, 4))
    boxes: list[tuple[float, float, float, float]] = []
    cars = []
    for _ in range(count):
        for _attempt in range(20):
            box, truncated = _sample_car_box(rng, width, height)
            if all(_overlap(box, other, width, height) < 0.3 for other in boxes):
                layer = _Layer.empty(width, height)
                _draw_car(layer, rng, box)
                boxes.append(box)
                cars.append(_DrawnCar(layer, truncated, bool(box[2] < 0.18 * width)))
                break
    return cars


def _draw_distractor(layer: _Layer, rng: np.random.Generator, width: int, height: int) -> None:
    """Draws one non-car shape in the car palette, often built from car-like parts."""
    size = rng.uniform(0.08, 0.35) * width
    cx, cy = rng.uniform(0, width), rng.uniform(0.1 * height, height)
    w, h = size, size * rng.uniform(0.4, 1.6)
    x0, y0, color = cx - w / 2, cy - h / 2, _palette_color(rng)
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
            _draw_wheel(layer, rng, (x, cy), r)
    else:  # building: a box with a grid of window-like panes
        layer.rect(x0, y0, x0 + w, y0 + h, color)
        glass, step = _glass_color(rng), max(4.0, w / rng.integers(2, 5))
        for wx in np.arange(x0 + step * 0.2, x0 + w - step * 0.6, step):
            for wy in np.arange(y0 + step * 0.2, y0 + h - step * 0.6, step):
                layer.rect(wx, wy, wx + step * 0.6, wy + step * 0.6, glass)


def _visible_masks(cars: list[np.ndarray], front: list[np.ndarray]) -> list[np.ndarray]:
    """Pixels of each car mask hidden neither by later cars nor by shapes drawn in front."""
    if not cars:
        return []
    hidden = np.any([m > 0 for m in front], axis=0) if front else np.zeros(cars[0].shape, bool)
    visible = []
    for mask in reversed(cars):
        visible.append((mask > 0) & ~hidden)
        hidden = hidden | (mask > 0)
    return visible[::-1]


def _min_visible_fraction(cars: list[np.ndarray], front: list[np.ndarray]) -> float:
    seen = _visible_masks(cars, front)
    fractions = [np.count_nonzero(s) / np.count_nonzero(c) for s, c in zip(seen, cars, strict=True)]
    return min(fractions, default=1.0)


def _annotate(car: _DrawnCar, visible: np.ndarray) -> _Car:
    """Builds the tight VOC box around the visible pixels of one car."""
    ys, xs = np.nonzero(visible)
    fraction = len(xs) / np.count_nonzero(car.layer.mask)
    # VOC is 1-based: 0-based pixel column x is VOC column x + 1, on both ends of the box.
    box = (int(v) + 1 for v in (xs.min(), ys.min(), xs.max(), ys.max()))
    return _Car(*box, truncated=car.truncated, difficult=bool(car.small or fraction < 0.65))


def _render_scene(
    rng: np.random.Generator, size: tuple[int, int], plain: bool = False
) -> tuple[np.ndarray, list[_Car]]:
    """Renders one BGR scene and its car annotations.

    Args:
        rng: Source of all randomness of this scene.
        size: (width, height).
        plain: Test hook: flat magenta background, no distractors, no blur or noise.
    """
    width, height = size
    if plain:
        image = np.full((height, width, 3), _PLAIN_BACKGROUND, np.uint8)
    else:
        image = _background(rng, width, height)
    cars = _make_cars(rng, width, height)
    car_masks = [car.layer.mask for car in cars]
    back: list[_Layer] = []
    front: list[_Layer] = []
    for _ in range(0 if plain else int(rng.integers(2, 7))):
        layer = _Layer.empty(width, height)
        _draw_distractor(layer, rng, width, height)
        # A shape goes in front only if every car stays at least half visible.
        fronted = [f.mask for f in front] + [layer.mask]
        in_front = rng.random() < 0.3 and _min_visible_fraction(car_masks, fronted) >= 0.5
        (front if in_front else back).append(layer)
    for layer in back + [car.layer for car in cars] + front:
        on = layer.mask > 0
        image[on] = layer.image[on]
    visible = _visible_masks(car_masks, [f.mask for f in front])
    annotations = [_annotate(car, seen) for car, seen in zip(cars, visible, strict=True)]
    if not plain:
        blurred = cv2.GaussianBlur(image, (3, 3), rng.uniform(0.4, 0.9)).astype(np.float32)
        noisy = blurred + rng.normal(0.0, rng.uniform(2.0, 6.0), image.shape)
        image = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    return image, annotations


def _image_rng(seed: int, index: int) -> np.random.Generator:
    # Per-image streams keep every image independent of num_images; the leading 1 keeps them
    # apart from the split stream [seed, 0].
    return np.random.Generator(np.random.PCG64([seed, 1, index]))


def _annotation_xml(image_id: str, width: int, height: int, cars: list[_Car]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for car in cars:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = "car"
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(car.truncated))
        ET.SubElement(obj, "difficult").text = str(int(car.difficult))
        box = ET.SubElement(obj, "bndbox")
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            ET.SubElement(box, tag).text = str(getattr(car, tag))
    ET.indent(root, space="\t")
    return (ET.tostring(root, encoding="unicode") + "\n").encode("utf-8")


def _image_flag(cars: list[_Car]) -> int:
    if any(not car.difficult for car in cars):
        return 1
    return 0 if cars else -1


def _write_image_sets(
    main: Path, flags: dict[str, int], n_val: int, n_test: int, seed: int
) -> None:
    """Writes {split}.txt and VOC's car_{split}.txt ("000001  1") for train, val, trainval and,
    when ``n_test``, test."""
    ids = sorted(flags)
    order = np.random.Generator(np.random.PCG64([seed, 0])).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    test = sorted(ids[i] for i in order[n_val : n_val + n_test])
    trainval = sorted(set(ids) - set(test))
    splits = {"train": sorted(set(trainval) - set(val)), "val": val, "trainval": trainval}
    if n_test:
        splits["test"] = test
    for name, members in splits.items():
        atomic_write_bytes(main / f"{name}.txt", "".join(f"{i}\n" for i in members).encode())
        lines = "".join(f"{i} {flags[i]:2d}\n" for i in members)
        atomic_write_bytes(main / f"car_{name}.txt", lines.encode())


def _write_image(job: tuple) -> list[_Car]:
    """Renders and writes one image and its annotation; returns its cars."""
    root, image_id, index, seed, (width, height) = job
    image, cars = _render_scene(_image_rng(seed, index), (width, height))
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for image {image_id}")
    atomic_write_bytes(root / "JPEGImages" / f"{image_id}.jpg", jpeg.tobytes())
    xml = _annotation_xml(image_id, width, height, cars)
    atomic_write_bytes(root / "Annotations" / f"{image_id}.xml", xml)
    return cars


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
    if min(image_size) < _MIN_SIZE:
        raise ConfigError(
            f"--size must be at least {_MIN_SIZE}x{_MIN_SIZE} (got {image_size[0]}x{image_size[1]})"
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
) -> dict:
    """Writes a synthetic VOC2007-layout car dataset under `out`.

    Args:
        out: Dataset root; receives JPEGImages/, Annotations/ and ImageSets/Main/.
        num_images: Number of images (>= 2, so that train and val are both non-empty).
        seed: The same seed gives byte-identical files.
        image_size: (width, height), each at least 64.
        val_fraction: Share of images in val, in (0, 1).
        test_fraction: Share of images in a test split (0: none, as before), kept out of
            trainval.

    Returns:
        {"root", "images", "train", "val", "test", "cars", "difficult", "truncated"}.
    """
    root = Path(out)
    _validate(root, num_images, seed, image_size, val_fraction, test_fraction)
    width, height = image_size
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"{i:06d}" for i in range(1, num_images + 1)]
    flags: dict[str, int] = {}
    all_cars: list[_Car] = []
    jobs = [(root, image_id, index, seed, image_size) for index, image_id in enumerate(ids, 1)]
    # Each image has its own generator, so processes give the same bytes as one loop.
    workers = min(os.cpu_count() or 1, num_images // 200 + 1)
    if workers > 1:
        methods = mp.get_all_start_methods()
        context = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        with context.Pool(workers) as pool:
            written = pool.map(_write_image, jobs, chunksize=32)
    else:
        written = [_write_image(job) for job in jobs]
    for image_id, cars in zip(ids, written, strict=True):
        flags[image_id] = _image_flag(cars)
        all_cars += cars
    n_test = min(max(round(num_images * test_fraction), 1), num_images - 2) if test_fraction else 0
    n_val = min(max(round(num_images * val_fraction), 1), num_images - n_test - 1)
    _write_image_sets(root / "ImageSets" / "Main", flags, n_val, n_test, seed)
    summary = {
        "root": str(out),
        "images": num_images,
        "train": num_images - n_val - n_test,
        "val": n_val,
        "test": n_test,
        "cars": len(all_cars),
        "difficult": sum(c.difficult for c in all_cars),
        "truncated": sum(c.truncated for c in all_cars),
    }
    logger.info("wrote synthetic VOC dataset: %s", summary)
    return summary
