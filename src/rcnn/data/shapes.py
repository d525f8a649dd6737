"""Object classes for the synthetic dataset, each drawn by its shape.

Every class is a drawing function of a box ``(x0, y0, w, h)`` on a :class:`Layer`, with the
aspect ratio and the size its boxes take. The first classes differ in shape, not colour (all
draw from one palette): a car (low body, cabin, two wheels), a bus (a tall box with a row of
windows), a bicycle (two rings and a frame of bars), a person (upright: head, torso, legs).
The other VOC class names are families of shapes with variants (vehicles, four-legged
animals, furniture, objects), so that a dataset can have the 20 classes of VOC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

Color = tuple[int, int, int]
Box = tuple[float, float, float, float]  # x0, y0, w, h (unclipped, floats)

# fmt: off
# BGR, shared by objects and distractors so that colour alone never identifies a class.
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


@dataclass
class Layer:
    """One object drawn on its own full-size canvas, with the mask of the pixels it covers."""

    image: np.ndarray
    mask: np.ndarray

    @classmethod
    def empty(cls, width: int, height: int) -> Layer:
        return cls(np.zeros((height, width, 3), np.uint8), np.zeros((height, width), np.uint8))

    def poly(self, points: list[tuple[float, float]], color: Color) -> None:
        pts = [np.round(np.asarray(points)).astype(np.int32)]
        cv2.fillPoly(self.image, pts, color)
        cv2.fillPoly(self.mask, pts, 255)

    def circle(self, center: tuple[float, float], radius: float, color: Color, width=-1) -> None:
        c, r = (round(center[0]), round(center[1])), max(1, round(radius))
        thick = -1 if width < 0 else max(1, round(width))
        cv2.circle(self.image, c, r, color, thick)
        cv2.circle(self.mask, c, r, 255, thick)

    def ellipse(
        self, center: tuple[float, float], axes: tuple[float, float], angle: float, color: Color
    ) -> None:
        c = (round(center[0]), round(center[1]))
        ax = (max(1, round(axes[0])), max(1, round(axes[1])))
        cv2.ellipse(self.image, c, ax, angle, 0, 360, color, -1)
        cv2.ellipse(self.mask, c, ax, angle, 0, 360, 255, -1)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], color)

    def line(self, a: tuple[float, float], b: tuple[float, float], color: Color, width) -> None:
        p, q = (round(a[0]), round(a[1])), (round(b[0]), round(b[1]))
        thick = max(1, round(width))
        cv2.line(self.image, p, q, color, thick, cv2.LINE_8)
        cv2.line(self.mask, p, q, 255, thick, cv2.LINE_8)


def jitter(rng: np.random.Generator, color: Color, amount: float = 20) -> Color:
    values = np.clip(np.asarray(color) + rng.uniform(-amount, amount, 3), 0, 254)
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def palette_color(rng: np.random.Generator) -> Color:
    return jitter(rng, PALETTE[int(rng.integers(len(PALETTE)))])


def glass_color(rng: np.random.Generator) -> Color:
    return jitter(rng, (225, 190, 150), 25)


def dark(rng: np.random.Generator) -> Color:
    return jitter(rng, (30, 30, 30), 12)


def draw_wheel(layer: Layer, rng: np.random.Generator, center, radius: float) -> None:
    layer.circle(center, radius, dark(rng))
    layer.circle(center, radius * 0.45, jitter(rng, (175, 175, 175), 30))


class Frame:
    """Points of a box in (u, v) fractions, mirrored when the object faces left."""

    def __init__(self, box: Box, flip: bool):
        self.x0, self.y0, self.w, self.h = box
        self.flip = flip

    def __call__(self, u: float, v: float) -> tuple[float, float]:
        return self.x0 + (1 - u if self.flip else u) * self.w, self.y0 + v * self.h

    def rect(self, layer: Layer, u0, v0, u1, v1, color: Color) -> None:
        layer.poly([self(u0, v0), self(u1, v0), self(u1, v1), self(u0, v1)], color)


def draw_car(layer: Layer, rng: np.random.Generator, box: Box) -> None:
    """A side-view car: low body, cabin with windows, two wheels, lights."""
    p = Frame(box, rng.random() < 0.5)
    h = box[3]

    def quad(u0: float, u1: float, u2: float, u3: float, top: float, base: float) -> list:
        return [p(u0, base), p(u1, top), p(u2, top), p(u3, base)]

    back, front = rng.uniform(0.15, 0.28), rng.uniform(0.62, 0.78)
    roof_back, roof_front = back + rng.uniform(0.06, 0.12), front - rng.uniform(0.08, 0.16)
    mid, body, glass = (roof_back + roof_front) / 2, palette_color(rng), glass_color(rng)
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
        draw_wheel(layer, rng, p(u, 1.0 - radius / h), radius)


def draw_bus(layer: Layer, rng: np.random.Generator, box: Box, segments: int = 1) -> None:
    """A tall box on small wheels with a row of square windows and a door (a train: several
    such boxes in a row)."""
    p = Frame(box, rng.random() < 0.5)
    body, glass, h = palette_color(rng), glass_color(rng), box[3]
    gap = 0.02 if segments > 1 else 0.0
    for s in range(segments):
        u0, u1 = s / segments + gap, (s + 1) / segments - gap
        p.rect(layer, u0, 0.04, u1, 0.86, body)
        windows = max(2, round((u1 - u0) * box[2] / (0.28 * h)))
        step = (u1 - u0 - 0.06) / windows
        for i in range(windows):
            a = u0 + 0.03 + i * step
            p.rect(layer, a + 0.1 * step, 0.14, a + 0.85 * step, 0.45, glass)
        p.rect(layer, u1 - 0.05, 0.52, u1 - 0.02, 0.6, (150, 230, 250))
    p.rect(layer, 1 - gap - 0.1 / segments, 0.14, 1 - gap - 0.04 / segments, 0.8, glass)  # door
    radius = h * rng.uniform(0.1, 0.13)
    for s in range(segments):
        for u in (0.15, 0.85):
            draw_wheel(layer, rng, p((s + u) / segments, 1.0 - radius / h), radius)


def draw_train(layer: Layer, rng: np.random.Generator, box: Box) -> None:
    draw_bus(layer, rng, box, segments=int(rng.integers(2, 4)))


def draw_bicycle(layer: Layer, rng: np.random.Generator, box: Box, motor: bool = False) -> None:
    """Two wheel rings and a frame of bars (a motorbike: thicker wheels and a filled body)."""
    p = Frame(box, rng.random() < 0.5)
    frame, h = palette_color(rng), box[3]
    radius = h * rng.uniform(0.3, 0.34)
    rear, front = p(0.22, 1 - radius / h), p(0.78, 1 - radius / h)
    bar = max(1.5, h * 0.045)
    for hub in (rear, front):
        layer.circle(hub, radius, dark(rng), width=bar * (1.8 if motor else 1.0))
    pedal, seat, head = p(0.45, 0.68), p(0.38, 0.3), p(0.7, 0.28)
    if motor:
        layer.poly([p(0.3, 0.45), p(0.42, 0.3), p(0.72, 0.32), p(0.66, 0.68), p(0.36, 0.66)], frame)
    for a, b in ((rear, pedal), (pedal, seat), (seat, rear), (seat, head), (head, pedal),
                 (head, front)):  # fmt: skip
        layer.line(a, b, frame, bar)
    layer.line(head, p(0.78, 0.12), frame, bar)
    layer.line(p(0.72, 0.1), p(0.86, 0.12), dark(rng), bar)  # handlebar
    layer.line(p(0.3, 0.27), p(0.46, 0.27), dark(rng), bar * 1.5)  # saddle


def draw_motorbike(layer: Layer, rng: np.random.Generator, box: Box) -> None:
    draw_bicycle(layer, rng, box, motor=True)


def draw_person(layer: Layer, rng: np.random.Generator, box: Box) -> None:
    """Upright: a head, a torso, two arms and two legs."""
    p = Frame(box, False)
    skin = jitter(rng, (140, 170, 210), 25)
    shirt, pants = palette_color(rng), palette_color(rng)
    w, h = box[2], box[3]
    layer.circle(p(0.5, 0.09), min(0.09 * h, 0.3 * w), skin)
    p.rect(layer, 0.22, 0.18, 0.78, 0.56, shirt)
    p.rect(layer, 0.06, 0.2, 0.2, 0.52, shirt)
    p.rect(layer, 0.8, 0.2, 0.94, 0.52, shirt)
    p.rect(layer, 0.26, 0.56, 0.47, 1.0, pants)
    p.rect(layer, 0.53, 0.56, 0.74, 1.0, pants)


def draw_aeroplane(layer: Layer, rng: np.random.Generator, box: Box) -> None:
    """A fuselage, a swept wing and a tail fin, seen from the side."""
    p = Frame(box, rng.random() < 0.5)
    body, h = palette_color(rng), box[3]
    cx, cy = p(0.5, 0.6)
    layer.ellipse((cx, cy), (box[2] * 0.5, h * 0.14), 0, body)
    layer.poly([p(0.35, 0.6), p(0.6, 0.6), p(0.42, 1.0), p(0.3, 1.0)], jitter(rng, body, 30))
    layer.poly([p(0.02, 0.55), p(0.14, 0.55), p(0.08, 0.0), p(0.0, 0.0)], jitter(rng, body, 30))
    for i in range(5):
        layer.circle(p(0.3 + 0.09 * i, 0.55), h * 0.035, glass_color(rng))


def draw_boat(layer: Layer, rng: np.random.Generator, box: Box) -> None:
    """A hull, wider at the top, with a cabin or a sail."""
    p = Frame(box, rng.random() < 0.5)
    hull = palette_color(rng)
    layer.poly([p(0.0, 0.6), p(1.0, 0.6), p(0.85, 1.0), p(0.12, 1.0)], hull)
    if rng.random() < 0.5:
        layer.poly([p(0.45, 0.0), p(0.45, 0.58), p(0.85, 0.58)], jitter(rng, (225, 225, 225)))
        layer.line(p(0.45, 0.0), p(0.45, 0.6), dark(rng), max(1.0, box[3] * 0.03))
    else:
        p.rect(layer, 0.25, 0.25, 0.7, 0.6, palette_color(rng))
        p.rect(layer, 0.32, 0.32, 0.62, 0.45, glass_color(rng))


def draw_animal(layer: Layer, rng: np.random.Generator, box: Box, kind: str) -> None:
    """A four-legged animal from the side: body, legs, neck and head, tail; ``kind`` picks the
    proportions and marks (ears, horns, wool, spots, mane)."""
    p = Frame(box, rng.random() < 0.5)
    coat = jitter(rng, (230, 230, 230), 20) if kind in ("sheep", "cow") else palette_color(rng)
    leg = {"horse": 0.5, "cow": 0.38, "sheep": 0.32, "dog": 0.36, "cat": 0.3}[kind]
    top = 1.0 - leg
    w, h = box[2], box[3]
    body_c = p(0.45, top - 0.2)
    if kind == "sheep":  # wool: a cloud of circles
        for du, dv in ((-0.2, 0), (0, -0.06), (0.2, 0), (-0.1, 0.08), (0.1, 0.08)):
            layer.circle(p(0.45 + du, top - 0.2 + dv), 0.2 * h, coat)
    else:
        layer.ellipse(body_c, (0.36 * w, 0.22 * h), 0, coat)
    for u in (0.18, 0.3, 0.6, 0.72):
        p.rect(layer, u - 0.03, top - 0.05, u + 0.03, 1.0, dark(rng) if kind == "sheep" else coat)
    neck_top = 0.12 if kind == "horse" else 0.3
    layer.poly([p(0.72, top - 0.35), p(0.82, neck_top), p(0.9, neck_top + 0.05),
                p(0.8, top - 0.15)], coat)  # fmt: skip
    head = dark(rng) if kind == "sheep" else coat
    layer.ellipse(p(0.9, neck_top + 0.05), (0.09 * w, 0.08 * h), 20, head)
    if kind == "cat":
        for du in (-0.03, 0.04):
            layer.poly([p(0.87 + du, neck_top - 0.02), p(0.9 + du, neck_top - 0.2),
                        p(0.93 + du, neck_top - 0.02)], coat)  # fmt: skip
        layer.line(p(0.1, top - 0.2), p(0.0, top - 0.6), coat, max(1.0, 0.04 * h))
    elif kind == "dog":
        layer.ellipse(p(0.86, neck_top + 0.08), (0.03 * w, 0.08 * h), 0, dark(rng))
        layer.line(p(0.1, top - 0.25), p(0.02, top - 0.45), coat, max(1.0, 0.05 * h))
    elif kind == "horse":
        layer.line(p(0.74, top - 0.35), p(0.84, neck_top), dark(rng), max(1.0, 0.05 * h))
        layer.line(p(0.1, top - 0.25), p(0.05, top + 0.15), dark(rng), max(1.0, 0.06 * h))
    elif kind == "cow":
        for du in (-0.15, 0.05, 0.2):
            layer.ellipse(p(0.45 + du, top - 0.22), (0.07 * w, 0.08 * h), 30, dark(rng))
        layer.line(p(0.88, neck_top - 0.02), p(0.84, neck_top - 0.12), (230, 230, 230),
                   max(1.0, 0.03 * h))  # fmt: skip


def draw_bird(layer: Layer, rng: np.random.Generator, box: Box) -> None:
    p = Frame(box, rng.random() < 0.5)
    color, w, h = palette_color(rng), box[2], box[3]
    layer.ellipse(p(0.45, 0.6), (0.35 * w, 0.25 * h), 0, color)
    layer.circle(p(0.8, 0.35), 0.18 * h, color)
    layer.poly([p(0.92, 0.3), p(1.0, 0.38), p(0.92, 0.42)], (40, 160, 230))
    layer.poly([p(0.25, 0.5), p(0.6, 0.45), p(0.3, 0.0)], jitter(rng, color, 40))
    layer.poly([p(0.12, 0.55), p(0.0, 0.4), p(0.0, 0.8)], color)


def draw_bottle(layer: Layer, rng: np.random.Generator, box: Box) -> None:
    p = Frame(box, False)
    glass = jitter(rng, (60, 140, 60), 40) if rng.random() < 0.5 else glass_color(rng)
    p.rect(layer, 0.05, 0.35, 0.95, 1.0, glass)
    layer.poly([p(0.05, 0.36), p(0.35, 0.2), p(0.65, 0.2), p(0.95, 0.36)], glass)
    p.rect(layer, 0.33, 0.06, 0.67, 0.22, glass)
    p.rect(layer, 0.3, 0.0, 0.7, 0.07, palette_color(rng))
    p.rect(layer, 0.05, 0.55, 0.95, 0.75, palette_color(rng))  # label


def draw_chair(layer: Layer, rng: np.random.Generator, box: Box) -> None:
    p = Frame(box, rng.random() < 0.5)
    wood, bar = palette_color(rng), max(1.0, box[2] * 0.08)
    p.rect(layer, 0.0, 0.0, 0.15, 0.6, wood)  # back
    p.rect(layer, 0.0, 0.5, 1.0, 0.6, wood)  # seat
    for u in (0.05, 0.95):
        layer.line(p(u, 0.58), p(u, 1.0), wood, bar)


def draw_table(layer: Layer, rng: np.random.Generator, box: Box) -> None:
    p = Frame(box, False)
    wood = palette_color(rng)
    p.rect(layer, 0.0, 0.0, 1.0, 0.14, wood)
    for u in (0.06, 0.3, 0.7, 0.94):
        p.rect(layer, u - 0.025, 0.12, u + 0.025, 1.0, jitter(rng, wood, 15))


def draw_sofa(layer: Layer, rng: np.random.Generator, box: Box) -> None:
    p = Frame(box, False)
    cloth = palette_color(rng)
    p.rect(layer, 0.06, 0.0, 0.94, 0.55, jitter(rng, cloth, 15))  # back
    p.rect(layer, 0.0, 0.45, 1.0, 0.9, cloth)
    for u0, u1 in ((0.0, 0.1), (0.9, 1.0)):
        p.rect(layer, u0, 0.25, u1, 0.9, jitter(rng, cloth, 25))  # arms
    for u in (0.12, 0.5):
        p.rect(layer, u, 0.5, u + 0.36, 0.62, jitter(rng, cloth, 35))  # cushions
    for u in (0.04, 0.92):
        p.rect(layer, u, 0.9, u + 0.04, 1.0, dark(rng))


def draw_plant(layer: Layer, rng: np.random.Generator, box: Box) -> None:
    p = Frame(box, False)
    w, h = box[2], box[3]
    layer.poly([p(0.2, 0.62), p(0.8, 0.62), p(0.7, 1.0), p(0.3, 1.0)], jitter(rng, (40, 80, 160)))
    for _ in range(int(rng.integers(4, 8))):
        u, v = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.45)
        leaf = jitter(rng, (50, 150, 50), 40)
        layer.ellipse(p(u, v), (0.18 * w, 0.08 * h), rng.uniform(0, 180), leaf)
    layer.line(p(0.5, 0.62), p(0.5, 0.3), jitter(rng, (40, 110, 40)), max(1.0, 0.04 * w))


def draw_tvmonitor(layer: Layer, rng: np.random.Generator, box: Box) -> None:
    p = Frame(box, False)
    p.rect(layer, 0.0, 0.0, 1.0, 0.8, dark(rng))
    p.rect(layer, 0.06, 0.07, 0.94, 0.73, jitter(rng, (110, 60, 30), 40))  # screen
    p.rect(layer, 0.44, 0.8, 0.56, 0.92, dark(rng))
    p.rect(layer, 0.3, 0.92, 0.7, 1.0, dark(rng))


@dataclass(frozen=True)
class Shape:
    """How a class is drawn: the function, and the ratio (height / width) and width (a
    fraction of the image's) of its boxes."""

    draw: Callable[[Layer, np.random.Generator, Box], None]
    ratio: tuple[float, float]
    width: tuple[float, float]
    flies: bool = False  # placed anywhere, not standing on the ground


def _animal(kind: str) -> Callable:
    return lambda layer, rng, box: draw_animal(layer, rng, box, kind)


# The first four differ most: `rcnn synth --classes car bus bicycle person`.
SHAPES: dict[str, Shape] = {
    "car": Shape(draw_car, (0.38, 0.55), (0.15, 0.6)),
    "bus": Shape(draw_bus, (0.36, 0.5), (0.25, 0.65)),
    "bicycle": Shape(draw_bicycle, (0.53, 0.67), (0.18, 0.4)),
    "person": Shape(draw_person, (2.2, 3.1), (0.09, 0.2)),
    "train": Shape(draw_train, (0.22, 0.33), (0.45, 0.8)),
    "motorbike": Shape(draw_motorbike, (0.53, 0.67), (0.2, 0.42)),
    "aeroplane": Shape(draw_aeroplane, (0.31, 0.45), (0.3, 0.65), flies=True),
    "boat": Shape(draw_boat, (0.42, 0.71), (0.2, 0.5)),
    "bird": Shape(draw_bird, (0.62, 0.83), (0.08, 0.2), flies=True),
    "cat": Shape(_animal("cat"), (0.62, 0.83), (0.12, 0.25)),
    "dog": Shape(_animal("dog"), (0.62, 0.83), (0.15, 0.3)),
    "horse": Shape(_animal("horse"), (0.71, 1.0), (0.25, 0.45)),
    "sheep": Shape(_animal("sheep"), (0.59, 0.77), (0.18, 0.35)),
    "cow": Shape(_animal("cow"), (0.59, 0.77), (0.25, 0.45)),
    "bottle": Shape(draw_bottle, (2.4, 3.3), (0.05, 0.1)),
    "chair": Shape(draw_chair, (1.25, 1.8), (0.1, 0.2)),
    "diningtable": Shape(draw_table, (0.42, 0.62), (0.25, 0.5)),
    "sofa": Shape(draw_sofa, (0.38, 0.55), (0.3, 0.55)),
    "pottedplant": Shape(draw_plant, (1.1, 1.65), (0.1, 0.2)),
    "tvmonitor": Shape(draw_tvmonitor, (0.67, 0.83), (0.15, 0.3)),
}
