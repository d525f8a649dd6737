"""The R-CNN paper's analysis of a detector's top-ranked false positives (its Figure 5, after
Hoiem, Chodpathumwan and Dai, "Diagnosing error in object detectors", ECCV 2012).

For each class, its false positives by the VOC rules (:mod:`rcnn.evaluation.voc_eval`) are
taken in order of decreasing score, as many as the class has (non-difficult) objects, and each
is given the first kind that fits:

    loc   poor localization: IoU >= 0.1 with an object of its own class (IoU below 0.5, or a
          duplicate of an object already found)
    sim   confusion with a similar class: IoU >= 0.1 with an object of a class of its group
    oth   confusion with another class: IoU >= 0.1 with an object of any other class
    bg    a box on background

The groups are Hoiem et al.'s for PASCAL VOC (:data:`~rcnn.data.annotations.VOC_GROUPS`), or a COCO
file's supercategories; other classes have no similar class. Only the classes being evaluated
are looked at: an object of a class the model does not know counts as background.
"""

from __future__ import annotations

import numpy as np

from rcnn.data.annotations import VOC_GROUPS
from rcnn.evaluation.voc_eval import ClassTruth, match_flat
from rcnn.ops.boxes import box_iou

KINDS = ("loc", "sim", "oth", "bg")
NAMES = {
    "loc": "localization",
    "sim": "similar class",
    "oth": "other class",
    "bg": "background",
}
CONFUSED_IOU = 0.1


def similar_classes(cls: str, groups=VOC_GROUPS) -> set[str]:
    """The other classes of ``cls``'s group (none for a class outside every group)."""
    return {c for group in groups.values() if cls in group for c in group} - {cls}


def _boxes_of(truth: ClassTruth, image: int) -> np.ndarray:
    return truth.boxes[truth.image == image]


def analyze_false_positives(
    detections: dict,
    truth: dict[str, ClassTruth],
    classes: list[str],
    top: int | None = None,
    groups=VOC_GROUPS,
) -> dict:
    """``{class: {"top": N, "loc": n, "sim": n, "oth": n, "bg": n}}`` over each class's ``N``
    highest-scored false positives (``N`` = its objects, or ``top``).

    Args:
        detections: ``{k: (image indices, scores, boxes)}`` for class ``classes[k - 1]``.
        truth: every class's boxes over the same images.
        groups: ``{group: classes}`` of similar classes.
    """
    out = {}
    for k, cls in enumerate(classes, start=1):
        images, scores, boxes = detections[k]
        images = np.asarray(images, np.int64).reshape(-1)
        boxes = np.asarray(boxes, float).reshape(-1, 4)
        order = np.argsort(-np.asarray(scores, float).reshape(-1), kind="stable")
        _, fp = match_flat(images, scores, boxes, truth[cls])  # in score order, as ``order``
        wanted = truth[cls].positives if top is None else top
        false = order[np.flatnonzero(fp)][:wanted]
        similar = similar_classes(cls, groups) & set(classes)
        counts = dict.fromkeys(KINDS, 0)
        for i in false:
            counts[_kind(boxes[i], int(images[i]), cls, similar, truth)] += 1
        out[cls] = {"top": int(len(false)), **counts}
    return out


def _kind(box: np.ndarray, image: int, cls: str, similar: set[str], truth) -> str:
    def overlaps(name: str) -> bool:
        theirs = _boxes_of(truth[name], image)
        return bool(len(theirs)) and float(box_iou(box[None], theirs).max()) >= CONFUSED_IOU

    if overlaps(cls):
        return "loc"
    if any(overlaps(name) for name in similar):
        return "sim"
    if any(overlaps(name) for name in truth if name != cls and name not in similar):
        return "oth"
    return "bg"


def format_analysis(analysis: dict) -> str:
    """One line a class: the share of each kind among its top false positives."""
    lines = [f"{'class':<14}{'top FPs':>8}" + "".join(f"{NAMES[k]:>15}" for k in KINDS)]
    for cls, found in analysis.items():
        shares = [found[k] / found["top"] if found["top"] else float("nan") for k in KINDS]
        lines.append(f"{cls:<14}{found['top']:>8}" + "".join(f"{s:>15.2f}" for s in shares))
    return "\n".join(lines)


def plot_analysis(analysis: dict, path, title: str) -> None:
    """Stacked bars, one a class: the share of each kind among its top false positives."""
    from matplotlib.figure import Figure

    from rcnn.evaluation.plots import DPI, save_figure

    classes = list(analysis)
    labels = [f"{c}\n{analysis[c]['top']}" for c in classes]  # with how many were sorted
    fig = Figure(figsize=(max(5.5, 0.7 * len(classes) + 3), 4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    bottom = np.zeros(len(classes))
    colors = {"loc": "tab:blue", "sim": "tab:orange", "oth": "tab:green", "bg": "tab:gray"}
    for kind in KINDS:
        share = np.array(
            [analysis[c][kind] / analysis[c]["top"] if analysis[c]["top"] else 0 for c in classes]
        )
        ax.bar(labels, share, bottom=bottom, label=NAMES[kind], color=colors[kind])
        bottom += share
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of the top false positives")
    ax.set_xlabel("class (false positives sorted)")
    ax.tick_params(axis="x", labelrotation=45 if len(classes) > 6 else 0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    ax.set_title(title)
    save_figure(fig, path)
