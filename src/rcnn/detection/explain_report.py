"""``rcnn explain``: one image's trip through the detector, as ``OUT/explain.png`` (the
figure), ``OUT/explain.md`` (its numbers) and ``OUT/explain.json`` (the kept detections).

``OUT`` is built in a staging folder beside it and swapped in at the end, so a failed run
leaves an earlier one as it was; an existing ``OUT`` is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from rcnn.detection.config import DetectorConfig
from rcnn.detection.detector import Detector
from rcnn.detection.explain import Explanation, explain_image, read_inputs
from rcnn.detection.explain_figure import TOP, draw_explanation, iou_with_class, top_rows
from rcnn.errors import ConfigError, RcnnError
from rcnn.files import atomic_write_bytes
from rcnn.modeling.checkpoint import load_model

logger = logging.getLogger(__name__)

FILES = ("explain.png", "explain.md", "explain.json")


def run_explain(
    model: str,
    image: str,
    out: str,
    cfg: DetectorConfig,
    annotation: str | None = None,
    overwrite: bool = False,
    classes: list[str] | None = None,
    exif: bool = True,
) -> dict:
    """Explains ``image`` by the detector ``model`` with ``cfg`` into ``out``; returns what
    it wrote and the counts of each stage. The image is turned upright by its EXIF orientation
    (with ``exif``, as ``rcnn detect`` does) unless an ``annotation`` is given, whose boxes are
    of the stored pixels, as a dataset's."""
    from rcnn.data.images import upright_copy
    from rcnn.detection.exported import is_exported

    if is_exported(model):
        raise ConfigError(
            f"{model}: rcnn explain needs the network's own stages (its scores before NMS, its "
            "warped regions), which an exported graph does not expose; give the run folder "
            "or checkpoint it was exported from"
        )
    out_dir = Path(out)
    check_out(out_dir, overwrite)
    parsed = read_inputs(image, annotation)  # before the model: a mistake is said at once
    detector = Detector(load_model(model, classes), cfg)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-explain-", dir=out_dir.parent))
    try:
        read = upright_copy(str(image), staging / "upright.png") if exif and not parsed else image
        ex = explain_image(detector, str(read), parsed)
        ex.path = str(image)
        Path(staging / "upright.png").unlink(missing_ok=True)
        draw_explanation(ex, staging / "explain.png")
        atomic_write_bytes(staging / "explain.md", explain_markdown(ex).encode())
        atomic_write_bytes(staging / "explain.json", json.dumps(explain_record(ex)).encode())
        swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "out": str(out_dir),
        "proposals": len(ex.proposals),
        "candidates": ex.candidates,
        "detections": len(ex.detections),
    }


def check_out(out: Path, overwrite: bool) -> None:
    """Refuses an ``--out`` that is a file, or a folder with something in it without
    ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise RcnnError(f"--out {out} already exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: its folder {out.parent} does not exist")


def swap_in(staging: Path, out: Path) -> None:
    """Puts the staged folder at ``out``; the previous ``out`` goes only once it is there."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _box(box) -> str:
    return "(" + ", ".join(f"{float(v):.1f}" for v in box) + ")"


def explain_markdown(ex: Explanation) -> str:
    """The numbers of each stage, as the figure's panels."""
    lines = [
        f"# {Path(ex.path).name} through R-CNN",
        "",
        f"Image {ex.size[0]}x{ex.size[1]}; classes {', '.join(ex.classes)}; scored by "
        f"{ex.scorer}. Boxes are x1, y1, x2, y2 (x2, y2 exclusive).",
        "",
    ]
    lines += _proposals_section(ex) + _labels_section(ex) + _warp_section(ex)
    lines += _scores_section(ex) + _kept_section(ex) + _regression_section(ex)
    return "\n".join(lines) + "\n"


def _proposals_section(ex: Explanation) -> list[str]:
    lines = ["## (a) Proposals", "", f"Selective Search made {len(ex.proposals)} proposals."]
    if ex.truth is None:
        return [*lines, "Without an annotation there is no recall to measure.", ""]
    truth = ex.truth
    gt = truth.regions.gt_boxes
    lines += [
        f"Recall of the {len(gt)} objects: {truth.recall(0.5):.3f} at IoU 0.5, "
        f"{truth.recall(0.7):.3f} at IoU 0.7.",
        "",
        "| object | class | box | best proposal | IoU |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, (box, label) in enumerate(zip(gt, truth.regions.gt_labels, strict=True)):
        row, iou = truth.best[i], truth.best_iou[i]
        lines.append(
            f"| {i} | {ex.classes[label - 1]} | {_box(box)} | #{row} "
            f"{_box(ex.proposals[row])} | {iou:.3f} |"
        )
    return [*lines, ""]


def _labels_section(ex: Explanation) -> list[str]:
    lines = ["## (b) Labels", ""]
    if ex.truth is None:
        return [*lines, "Give `--annotation` to label the proposals by the run's rules.", ""]
    truth = ex.truth
    regions, rules = truth.regions, truth.rules
    per_class = ", ".join(
        f"{np.count_nonzero(regions.labels == k + 1)} {name}" for k, name in enumerate(ex.classes)
    )
    added = int(regions.is_gt.sum())
    lines += [
        f"Rules: {json.dumps(rules.labels.to_dict())} (from {rules.source}; the run's regions "
        f"were made of the proposals {rules.search}).",
        "",
        f"Of the {len(ex.proposals)} proposals: {np.count_nonzero(truth.status == 1)} object "
        f"({per_class} among the stored regions), {np.count_nonzero(truth.status == 0)} "
        f"background, {np.count_nonzero(truth.status == -1)} left out. `rcnn prepare` stores "
        f"{len(regions.boxes)} regions for this image ({added} of them ground-truth boxes).",
        "",
    ]
    return lines


def _warp_section(ex: Explanation) -> list[str]:
    warp = ex.warp
    return [
        "## (c) Warped regions",
        "",
        f"Each region is warped to {warp['size']}x{warp['size']} with {warp['pad']} pixels "
        f"of context and normalized by mean {warp['mean']} and std {warp['std']}; the "
        f"figure shows {len(ex.warped)} of them de-normalized (proposals "
        f"{', '.join(f'#{r}' for r in ex.warped_rows)}).",
        "",
    ]


def _scores_section(ex: Explanation) -> list[str]:
    lines = [
        "## (d) Scores before NMS",
        "",
        f"{ex.candidates} (proposal, class) pairs score at least the threshold "
        f"{ex.threshold:g}. The best {TOP} of each class:",
        "",
        "| class | proposal | box | score |",
        "| --- | --- | --- | --- |",
    ]
    for k, name in enumerate(ex.classes):
        for row in top_rows(ex, k):
            lines.append(
                f"| {name} | #{row} | {_box(ex.proposals[row])} | {ex.scores[row, k]:.4f} |"
            )
    return [*lines, ""]


def _kept_section(ex: Explanation) -> list[str]:
    dets = ex.detections
    lines = [
        "## (e) What NMS keeps",
        "",
        f"Per class, a box overlapping a better one by IoU > {ex.nms:g} is suppressed: "
        f"{len(dets)} detections are kept (the detector's output).",
        "",
        "| class | score | proposal | box |",
        "| --- | --- | --- | --- |",
    ]
    for box, score, label, row in zip(
        dets.boxes, dets.scores, dets.labels, ex.kept_rows, strict=True
    ):
        lines.append(f"| {ex.classes[label - 1]} | {score:.4f} | #{row} | {_box(box)} |")
    return [*lines, ""]


def _regression_section(ex: Explanation) -> list[str]:
    lines = ["## (f) Box regression", ""]
    if ex.moved is None:
        return [*lines, "Not used: `--bbox-reg DIR` moves each box by its class's regressor.", ""]
    before = iou_with_class(ex.before, ex.kept_labels, ex)
    after = iou_with_class(ex.after, ex.kept_labels, ex)
    lines += [
        "| class | before | after | IoU before | IoU after | gain |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for b, a, label, ib, ia in zip(ex.before, ex.after, ex.kept_labels, before, after, strict=True):
        ious = "| - | - | - |" if np.isnan(ib) else f"| {ib:.3f} | {ia:.3f} | {ia - ib:+.3f} |"
        lines.append(f"| {ex.classes[label - 1]} | {_box(b)} | {_box(a)} {ious}")
    return [*lines, ""]


def explain_record(ex: Explanation) -> dict:
    """The numbers of ``explain.json``: counts and each kept detection."""
    record = {
        "image": ex.path,
        "width": ex.size[0],
        "height": ex.size[1],
        "classes": ex.classes,
        "scorer": ex.scorer,
        "threshold": ex.threshold,
        "nms": ex.nms,
        "proposals": len(ex.proposals),
        "candidates": ex.candidates,
        "detections": [
            {
                "class": ex.classes[label - 1],
                "score": float(score),
                "proposal": int(row),
                "before": [float(v) for v in b],
                "box": [float(v) for v in a],
            }
            for label, score, row, b, a in zip(
                ex.kept_labels, ex.detections.scores, ex.kept_rows, ex.before, ex.after, strict=True
            )
        ],
    }
    if ex.truth is not None:
        status = ex.truth.status
        record["recall"] = {"0.5": ex.truth.recall(0.5), "0.7": ex.truth.recall(0.7)}
        record["labels"] = {
            name: int(np.count_nonzero(status == code))
            for code, name in ((1, "object"), (0, "background"), (-1, "left_out"))
        }
    return record
