"""The figure of one image's trip through the detector (:class:`Explanation`), panel by panel:
(a) the proposals, (b) their labels by the run's rules, (c) warped regions as the network sees
them, (d) the best-scored regions of each class before NMS and the scores' spread, (e) what
NMS keeps, (f) each kept box before and after box regression.

Drawn with :class:`matplotlib.figure.Figure` (no pyplot state) and written atomically by
:func:`rcnn.evaluation.plots.save_figure`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rcnn.detection.explain import Explanation
from rcnn.evaluation.plots import DPI, save_figure
from rcnn.ops.boxes import box_iou

TOP = 5  # best-scored regions of each class drawn before NMS
TRUTH = "lime"
STATUS = {1: ("tab:red", "object"), 0: ("tab:blue", "background"), -1: ("0.75", "left out")}


def class_colour(label: int) -> str:
    """Class ``label`` (``1..K``) in matplotlib's tab10, as ``rcnn detect`` draws it."""
    return f"C{(int(label) - 1) % 10}"


def draw_explanation(ex: Explanation, path: str | Path, dpi: int = DPI) -> None:
    """Writes the figure of ``ex`` to ``path`` (PNG, PDF or SVG by its suffix); ``dpi`` 100
    makes a PNG 1300 pixels wide."""
    fig = Figure(figsize=(13, 11.5), dpi=dpi, layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.1, 1])
    axes = top.subplots(2, 3).ravel()
    panel_proposals(axes[0], ex)
    panel_labels(axes[1], ex)
    panel_top_scored(axes[2], ex)
    panel_score_spread(axes[3], ex)
    panel_kept(axes[4], ex)
    panel_regression(axes[5], ex)
    panel_warped(bottom, ex)
    fig.suptitle(f"{Path(ex.path).name}: one image through R-CNN (scored by {ex.scorer})")
    save_figure(fig, path, dpi)


def _image(ax: Axes, ex: Explanation, title: str) -> None:
    ax.imshow(ex.image, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _box(ax: Axes, box, colour, width=1.0, style="-", alpha=1.0, text=None) -> None:
    """``box`` in the project convention (x2, y2 exclusive) outlined on pixel edges."""
    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(
        Rectangle(
            (x1 - 0.5, y1 - 0.5),
            x2 - x1,
            y2 - y1,
            fill=False,
            ec=colour,
            lw=width,
            ls=style,
            alpha=alpha,
        )
    )
    if text:
        ax.text(
            x1,
            y1 - 1,
            text,
            color="white",
            fontsize=7,
            va="bottom",
            bbox={"fc": colour, "ec": "none", "pad": 1, "alpha": 0.85},
        )


def _truth(ax: Axes, ex: Explanation) -> None:
    if ex.truth is not None:
        for box in ex.truth.regions.gt_boxes:
            _box(ax, box, TRUTH, width=2.0)


def panel_proposals(ax: Axes, ex: Explanation) -> None:
    """(a) every proposal, the objects (green) and the best proposal of each (dashed)."""
    title = f"(a) {len(ex.proposals)} Selective Search proposals"
    alpha = min(0.5, max(0.05, 30 / max(1, len(ex.proposals))))
    for box in ex.proposals:
        _box(ax, box, "white", width=0.5, alpha=alpha)
    _truth(ax, ex)
    if ex.truth is not None:
        truth = ex.truth
        for row, iou in zip(truth.best, truth.best_iou, strict=True):
            _box(ax, ex.proposals[row], "yellow", width=1.5, style="--", text=f"best {iou:.2f}")
        title += f"\nrecall {truth.recall(0.5):.2f} at IoU 0.5, {truth.recall(0.7):.2f} at 0.7"
    _image(ax, ex, title)


def panel_labels(ax: Axes, ex: Explanation) -> None:
    """(b) each proposal as the run's rules label it: object, background or left out."""
    if ex.truth is None:
        _image(ax, ex, "(b) labels: give an annotation to see them")
        return
    status = ex.truth.status
    for code in (-1, 0, 1):  # objects drawn last, on top
        colour, _ = STATUS[code]
        rows = np.flatnonzero(status == code)
        alpha = 0.8 if code == 1 else min(0.5, max(0.05, 30 / max(1, len(rows))))
        for row in rows:
            _box(ax, ex.proposals[row], colour, width=0.8, alpha=alpha)
    _truth(ax, ex)
    counts = ", ".join(f"{np.count_nonzero(status == c)} {STATUS[c][1]}" for c in (1, 0, -1))
    rules = ex.truth.rules.labels
    _image(
        ax,
        ex,
        f"(b) labels by the run's rules: {counts}\nobject: IoU >= {rules.pos_iou}; "
        f"background: {rules.neg_iou_min} < IoU < {rules.neg_iou_max}",
    )
    for code in (1, 0, -1):
        ax.plot([], [], color=STATUS[code][0], label=STATUS[code][1])
    ax.legend(fontsize=7, loc="lower right")


def top_rows(ex: Explanation, k: int, count: int = TOP) -> np.ndarray:
    """The ``count`` proposals scoring highest for class ``k`` (0-based), best first."""
    return np.argsort(-ex.scores[:, k], kind="stable")[:count]


def panel_top_scored(ax: Axes, ex: Explanation) -> None:
    """(d) the best-scored proposals of each class before NMS, with their scores."""
    for k in range(len(ex.classes)):
        for row in top_rows(ex, k)[::-1]:
            box = ex.proposals[row]
            _box(ax, box, class_colour(k + 1), width=1.2, text=f"{ex.scores[row, k]:.2f}")
    _image(
        ax,
        ex,
        f"(d) the {TOP} best-scored proposals of each class, before NMS\n"
        f"{ex.candidates} (proposal, class) pairs score >= {ex.threshold:g}",
    )


def panel_score_spread(ax: Axes, ex: Explanation) -> None:
    """(d) how every proposal scores for each class, and the threshold."""
    for k, name in enumerate(ex.classes):
        scores = ex.scores[:, k]
        scores = scores[np.isfinite(scores)]
        if len(scores):
            ax.hist(scores, bins=40, histtype="step", color=class_colour(k + 1), label=name)
    if np.isfinite(ex.threshold):
        ax.axvline(ex.threshold, color="black", ls="--", lw=1, label=f"threshold {ex.threshold:g}")
    ax.set_yscale("log")
    ax.set_xlabel(f"score ({ex.scorer})")
    ax.set_ylabel("proposals")
    ax.set_title("(d) every proposal's score of each class", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def panel_kept(ax: Axes, ex: Explanation) -> None:
    """(e) the detections NMS keeps (the detector's output), with class and score."""
    dets = ex.detections
    _truth(ax, ex)
    for box, score, label in zip(dets.boxes, dets.scores, dets.labels, strict=True):
        _box(ax, box, class_colour(label), width=1.5, text=f"{ex.classes[label - 1]} {score:.2f}")
    _image(ax, ex, f"(e) NMS (IoU > {ex.nms:g} suppressed) keeps {len(dets)} of {ex.candidates}")


def iou_with_class(boxes: np.ndarray, labels: np.ndarray, ex: Explanation) -> np.ndarray:
    """float ``[D]``: each box's best IoU with an object of its class (NaN without one)."""
    out = np.full(len(boxes), np.nan)
    if ex.truth is None:
        return out
    gt, gt_labels = ex.truth.regions.gt_boxes, ex.truth.regions.gt_labels
    for i, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        mine = gt[gt_labels == label]
        if len(mine):
            out[i] = box_iou(np.asarray(box, np.float64).reshape(1, 4), mine).max()
    return out


def panel_regression(ax: Axes, ex: Explanation) -> None:
    """(f) each kept box before (dashed) and after box regression, with its IoU gain."""
    if ex.moved is None:
        _image(ax, ex, "(f) box regression: not used (--bbox-reg moves the boxes)")
        return
    _truth(ax, ex)
    gain = iou_with_class(ex.after, ex.kept_labels, ex) - iou_with_class(
        ex.before, ex.kept_labels, ex
    )
    for before, after, label, g in zip(ex.before, ex.after, ex.kept_labels, gain, strict=True):
        colour = class_colour(label)
        _box(ax, before, colour, width=1.0, style="--", alpha=0.8)
        _box(ax, after, colour, width=1.5, text=None if np.isnan(g) else f"{g:+.2f}")
        (bx, by), (ax_, ay) = (before[:2] + before[2:]) / 2, (after[:2] + after[2:]) / 2
        ax.annotate("", (ax_, ay), (bx, by), arrowprops={"arrowstyle": "->", "color": colour})
    shown = gain[np.isfinite(gain)]
    mean = f"; mean IoU gain {shown.mean():+.3f}" if len(shown) else ""
    _image(ax, ex, f"(f) box regression: dashed before, solid after{mean}")


def panel_warped(fig, ex: Explanation) -> None:
    """(c) regions warped as the network receives them, the context padding marked."""
    count = len(ex.warped)
    size, pad = ex.warp["size"], ex.warp["pad"]
    if count == 0:
        fig.suptitle("(c) no region to warp", fontsize=10)
        return
    ncols = min(8, count)
    axes = fig.subplots(int(np.ceil(count / ncols)), ncols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_axis_off()
    for ax, crop, row in zip(axes, ex.warped, ex.warped_rows, strict=False):
        ax.imshow(crop, interpolation="nearest")
        if pad:
            ax.add_patch(
                Rectangle(
                    (pad - 0.5, pad - 0.5),
                    size - 2 * pad,
                    size - 2 * pad,
                    fill=False,
                    ec="yellow",
                    lw=0.8,
                    ls="--",
                )
            )
        ax.set_title(warped_title(ex, int(row)), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"(c) regions as the network sees them: {size}x{size}, {pad} pixels of "
        "context (outside the dashed square), de-normalized",
        fontsize=10,
    )


def warped_title(ex: Explanation, row: int) -> str:
    """``"object car 0.71 / 0.93"``: the label and IoU (with an annotation), the best score."""
    k = int(np.argmax(ex.scores[row])) if ex.scores.shape[1] else 0
    score = f"{ex.classes[k]} {ex.scores[row, k]:.2f}" if ex.scores.shape[1] else ""
    if ex.truth is None:
        return f"#{row}: {score}"
    status = STATUS[int(ex.truth.status[row])][1]
    return f"{status}, IoU {ex.truth.ious[row]:.2f}\n{score}"
