"""Pictures of detections: a colour per class, the class name and score on each box."""

from __future__ import annotations

import cv2
import numpy as np

# matplotlib's tab10, as BGR: class k takes colour k - 1.
PALETTE = [
    (180, 119, 31),
    (14, 127, 255),
    (44, 160, 44),
    (40, 39, 214),
    (189, 103, 148),
    (75, 86, 140),
    (194, 119, 227),
    (127, 127, 127),
    (34, 189, 188),
    (207, 190, 23),
]
GROUND_TRUTH_COLOR = (60, 200, 60)  # BGR green


def class_color(label: int) -> tuple[int, int, int]:
    return PALETTE[(label - 1) % len(PALETTE)]


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    texts: list[str],
    colors: list[tuple[int, int, int]],
) -> np.ndarray:
    """A copy of the BGR ``image`` with each box outlined and its text on a filled tag.

    Boxes are in the project convention (``x2``, ``y2`` exclusive); they are drawn in reverse
    order, so the first (the best-scored) ends up on top.
    """
    out = image.copy()
    height, width = out.shape[:2]
    thickness = max(1, round(max(height, width) / 300))
    scale = max(0.35, max(height, width) / 1000)
    for box, text, color in reversed(list(zip(boxes, texts, colors, strict=True))):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), color, thickness)
        if not text:
            continue
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1  # above the box if it fits
        cv2.rectangle(out, (x1, top), (x1 + tw + 2, top + th + base + 2), color, cv2.FILLED)
        ink = (0, 0, 0) if sum(color) > 450 else (255, 255, 255)
        origin = (x1 + 1, top + th + 1)
        cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, ink, 1, cv2.LINE_AA)
    return out


def draw_detections(image: np.ndarray, detections, class_names: list[str]) -> np.ndarray:
    """``class score`` tags in the class's colour; ``class_names`` excludes background."""
    labels = detections.labels.tolist()
    texts = [
        f"{class_names[k - 1]} {s:.2f}"
        for k, s in zip(labels, detections.scores.tolist(), strict=True)
    ]
    return draw_boxes(image, detections.boxes, texts, [class_color(k) for k in labels])
