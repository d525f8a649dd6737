"""Synthetic outdoor scenes: a textured background and objects drawn by their class's shape
(:mod:`rcnn.data.shapes`), each annotated by what stays visible of it in front of the others,
with distractors that share the objects' palette and parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from rcnn.data.shapes import (
    SHAPES,
    Layer,
    Shape,
    draw_wheel,
    glass_color,
    palette_color,
)

PLAIN_BACKGROUND = (255, 0, 255)  # used by tests only; no object part is pure magenta


class _Drawn(NamedTuple):
    name: str
    layer: Layer
    truncated: bool
    small: bool


@dataclass(frozen=True)
class SceneObject:
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


def _annotate(obj: _Drawn, visible: np.ndarray) -> SceneObject:
    """Builds the tight VOC box around the visible pixels of one object."""
    ys, xs = np.nonzero(visible)
    fraction = len(xs) / np.count_nonzero(obj.layer.mask)
    # VOC is 1-based: 0-based pixel column x is VOC column x + 1, on both ends of the box.
    box = (int(v) + 1 for v in (xs.min(), ys.min(), xs.max(), ys.max()))
    difficult = bool(obj.small or fraction < 0.65)
    return SceneObject(obj.name, *box, truncated=obj.truncated, difficult=difficult)


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    plain: bool = False,
    classes: tuple[str, ...] = ("car",),
) -> tuple[np.ndarray, list[SceneObject]]:
    """Renders one BGR scene and its annotations.

    Args:
        rng: Source of all randomness of this scene.
        size: (width, height).
        plain: Test hook: flat magenta background, no distractors, no blur or noise.
        classes: the classes objects are drawn from.
    """
    width, height = size
    if plain:
        image = np.full((height, width, 3), PLAIN_BACKGROUND, np.uint8)
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


def image_rng(seed: int, index: int) -> np.random.Generator:
    # Per-image streams keep every image independent of num_images; the leading 1 keeps them
    # apart from the split stream [seed, 0].
    return np.random.Generator(np.random.PCG64([seed, 1, index]))
