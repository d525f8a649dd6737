"""Scoring detections of a split: its ground truth for a list of classes, the VOC devkit's
average precision per class (:mod:`rcnn.evaluation.voc_eval`) at IoU 0.5 and a stricter 0.7,
the false-positive analysis when asked, and the report and files of the metrics
(``metrics.json``, strict JSON, and ``pr.png``).

Detections arrive as ``{label: (images [D], scores [D], boxes [D, 4])}`` for labels ``1..K``,
``images`` indexing the split's image ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcnn.data.annotations import VOC_GROUPS
from rcnn.data.readers import Dataset
from rcnn.errors import RcnnError
from rcnn.evaluation.voc_eval import ClassTruth, ImageTruth, evaluate_flat
from rcnn.files import atomic_write_json

logger = logging.getLogger(__name__)

PROPOSAL_IOU = 0.5  # a ground-truth object counts as found by the proposals at this overlap

STRICT_IOU = 0.7  # a second, stricter overlap, where box regression shows


@dataclass
class SplitTruth:
    """The annotations of a split's images for a list of classes.

    Attributes:
        ids: the images, in split order; image ``i`` of every array is ``ids[i]``.
        classes: per class name, its boxes (:class:`ClassTruth`).
        objects: per image, its non-difficult boxes of every class (for proposal recall).
        sizes: per image, ``(width, height)`` as its annotation says (``(0, 0)`` if it does not).
        names: every object name the annotations use.
    """

    ids: list[str]
    classes: dict[str, ClassTruth]
    objects: dict[str, np.ndarray]
    sizes: dict[str, tuple[int, int]]
    names: set[str]


def load_ground_truth(dataset: Dataset, ids: list[str], classes: list[str]) -> SplitTruth:
    """The boxes of ``classes`` in every image of ``ids``, difficult objects flagged."""
    per_class: dict[str, dict] = {c: {} for c in classes}
    objects, sizes, names = {}, {}, set()
    for image_id in ids:
        annotation = dataset.annotation(image_id)
        sizes[image_id] = (annotation.width, annotation.height)
        names.update(o.name for o in annotation.objects)
        chosen = annotation.select(classes, True)
        for cls in classes:
            mine = [o for o in chosen if o.name == cls]
            boxes = np.array([o.box for o in mine], np.float64).reshape(-1, 4)
            difficult = np.array([o.difficult for o in mine], bool)
            per_class[cls][image_id] = ImageTruth(boxes, difficult)
        plain = [o.box for o in chosen if not o.difficult]
        objects[image_id] = np.array(plain, np.float64).reshape(-1, 4)
    flat = {c: ClassTruth.of(ids, per_class[c]) for c in classes}
    return SplitTruth(list(ids), flat, objects, sizes, names)


def check_classes_present(truth: SplitTruth, classes: list[str], where: str) -> None:
    """Refuses a split in which none of ``classes`` has an object: its mean AP is undefined,
    and the model was most likely trained for another dataset."""
    if not any(t.positives for t in truth.classes.values()):
        raise RcnnError(
            f"no (non-difficult) object of {classes} in {where} (its annotations name "
            f"{sorted(truth.names) or 'no object'}): is the model for this dataset?"
        )


def evaluate_detections(
    detections: dict, truth: SplitTruth, classes: list[str], analyze: bool = False, groups=None
) -> dict:
    """Per-class and mean AP (VOC2007 11-point and area under the curve) and final recall, and
    the 11-point mean AP at IoU > 0.7 (localization); with ``analyze``, the kinds of each
    class's top false positives (:mod:`rcnn.evaluation.false_positives`; similar classes by
    ``groups``, VOC's by default). ``detections[k]`` holds image indices into ``truth.ids``."""
    per_class = {}
    for k, cls in enumerate(classes, start=1):
        images, scores, boxes = detections[k]
        if not (np.isfinite(scores).all() and np.isfinite(boxes).all()):
            raise RcnnError(f"detections of {cls} hold scores or boxes that are not finite")
        per_class[cls] = evaluate_flat(images, scores, boxes, truth.classes[cls])
        strict = evaluate_flat(images, scores, boxes, truth.classes[cls], STRICT_IOU)
        per_class[cls]["ap_07_strict"] = strict["ap_07"]
    counted = [c for c in per_class.values() if c["positives"]]
    if len(counted) < len(per_class):
        empty = [name for name, c in per_class.items() if not c["positives"]]
        logger.warning("no (non-difficult) object of %s in the split: AP undefined, left out "
                       "of the mean", empty)  # fmt: skip
    nan = float("nan")
    found = {}
    if analyze:
        from rcnn.evaluation.false_positives import analyze_false_positives

        found["false_positives"] = analyze_false_positives(
            detections, truth.classes, classes, groups=VOC_GROUPS if groups is None else groups
        )
    return {
        **found,
        "classes": per_class,
        "map_07": float(np.mean([c["ap_07"] for c in counted])) if counted else nan,
        "map": float(np.mean([c["ap"] for c in counted])) if counted else nan,
        "map_07_strict": float(np.mean([c["ap_07_strict"] for c in counted])) if counted else nan,
    }


def finish(out: Path, metrics: dict) -> None:
    """Writes ``metrics.json`` and ``pr.png`` and adds the printable report to ``metrics``."""
    from rcnn.evaluation.metrics import PRCurve
    from rcnn.evaluation.plots import plot_pr_grid

    curves = {c: m.pop("curve") for c, m in metrics["classes"].items()}
    plot_pr_grid(
        {c: PRCurve(r, p, metrics["classes"][c]["ap"]) for c, (r, p) in curves.items()},
        out / "pr.png",
        title=f"Detection precision-recall, {metrics['split']} split",
    )
    if "false_positives" in metrics:
        from rcnn.evaluation.false_positives import plot_analysis

        plot_analysis(
            metrics["false_positives"],
            out / "false_positives.png",
            f"Top false positives by kind, {metrics['split']} split",
        )
    atomic_write_json(out / "metrics.json", null_from_nan(metrics))
    metrics["report"] = format_report(metrics)
    metrics["out"] = str(out)


def null_from_nan(value):
    """``value`` with every NaN or infinite float as ``None``: ``metrics.json`` is strict JSON
    (an undefined AP is ``null``), which every parser reads."""
    if isinstance(value, dict):
        return {k: null_from_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [null_from_nan(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def nan_from_null(value):
    """The metrics of a ``metrics.json`` as they were computed: ``null`` back to NaN (no
    metric is ever ``None``)."""
    if isinstance(value, dict):
        return {k: nan_from_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_from_null(v) for v in value]
    return float("nan") if value is None else value


def format_report(metrics: dict) -> str:
    lines = [f"{'class':<14}{'AP (07)':>9}{'AP':>8}{'recall':>8}{'objects':>9}{'detections':>12}"]
    for cls, m in metrics["classes"].items():
        lines.append(
            f"{cls:<14}{m['ap_07']:>9.3f}{m['ap']:>8.3f}{m['recall']:>8.3f}"
            f"{m['positives']:>9}{m['detections']:>12}"
        )
    lines.append(f"{'mean':<14}{metrics['map_07']:>9.3f}{metrics['map']:>8.3f}")
    lines.append(f"mean AP (07) at IoU > {STRICT_IOU}: {metrics['map_07_strict']:.3f}")
    if "proposal_recall" in metrics:
        lines.append(
            f"proposal recall at IoU {PROPOSAL_IOU}: {metrics['proposal_recall']:.3f} "
            f"({metrics['objects_found_by_proposals']} of {metrics['objects']} objects)"
        )
    if "coco" in metrics:
        from rcnn.evaluation.coco_eval import format_coco

        lines.append(format_coco(metrics["coco"]))
    if "false_positives" in metrics:
        from rcnn.evaluation.false_positives import format_analysis

        lines.append("kinds of each class's top false positives (as many as its objects):")
        lines.append(format_analysis(metrics["false_positives"]))
    return "\n".join(lines)
