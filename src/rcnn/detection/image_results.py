"""The per-image results of ``rcnn test``: ``OUT/detections/{id}.npz``, each written atomically
as soon as its image is done, with a digest of the image and its annotation; and
``OUT/done.json``, which says when a finished run's metrics stand as they are.

A killed run continues where it stopped (the saved images whose inputs are unchanged are kept,
a damaged file is made again), and an image or annotation changed since is detected again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from rcnn.data.readers import Dataset
from rcnn.errors import RcnnError
from rcnn.evaluation.detection_metrics import PROPOSAL_IOU, format_report, nan_from_null
from rcnn.evaluation.result_files import COCO_RESULTS, result_file_name
from rcnn.files import (
    DamagedFileError,
    atomic_write_bytes,
    file_digest,
    load_npz,
    npz_bytes,
    read_json,
    read_regular_file,
    remove_temporaries,
)
from rcnn.ops.boxes import box_iou

logger = logging.getLogger(__name__)

# A per-image file: "detections", float32 [D, 6] rows (x1, y1, x2, y2, score, label), and
# "about", a JSON object: objects, found, error, inputs. Two arrays, because each array of an
# .npz costs a header parse on reading, and a resume reads thousands of them.
ABOUT_KEYS = ("objects", "found", "error", "inputs")

DONE = "done.json"  # written when a run's metrics are complete: the digest of its inputs


def input_digest(dataset: Dataset, image_id: str) -> str:
    """What an image's detections were made from: its bytes and its annotation."""
    try:
        image = hashlib.sha256(read_regular_file(dataset.image_path(image_id))).hexdigest()[:32]
    except OSError:
        image = "unreadable"
    return f"{image}:{dataset.annotation_digest(image_id)}"


def inputs_digest(inputs: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{i}:{d}\n" for i, d in inputs.items()).encode()).hexdigest()


def files_digest(folder: Path, ids: list[str]) -> str | None:
    """The size and modification time of every per-image file (None if one is missing): a
    file changed since the run finished makes the run resume rather than stand."""
    parts = []
    for image_id in ids:
        try:
            found = npz_path(folder, image_id).stat()
        except OSError:
            return None
        parts.append(f"{image_id}:{found.st_size}:{found.st_mtime_ns}\n")
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def in_class_order(metrics: dict, classes) -> dict:
    """``metrics`` read back from JSON (whose keys are written sorted) with its per-class
    tables in the classes' order again, as a run that computes them gives them."""

    def ordered(table):
        if not isinstance(table, dict):
            return table
        return {**{c: table[c] for c in classes if c in table}, **table}

    if "classes" in metrics:
        metrics["classes"] = ordered(metrics["classes"])
    if isinstance(metrics.get("coco"), dict):
        metrics["coco"]["classes"] = ordered(metrics["coco"].get("classes"))
    if "false_positives" in metrics:
        metrics["false_positives"] = ordered(metrics["false_positives"])
    return metrics


def finished_metrics(
    folder: Path, digest: str, classes, split: str, ids: list[str], analyze: bool = False
) -> dict | None:
    """The metrics of the run in ``folder`` if it finished with inputs of ``digest`` and its
    files are all there, unchanged since; None otherwise."""
    try:
        done = read_json(folder / DONE, "`rcnn test` record")
        metrics = read_json(folder / "metrics.json", "`rcnn test` metrics")
    except (FileNotFoundError, DamagedFileError):
        return None
    files = [folder / result_file_name(split, c) for c in classes]
    files += [folder / "pr.png", folder / COCO_RESULTS]
    if done.get("inputs") != digest or not all(f.is_file() for f in files):
        return None
    if done.get("detections") is None or done["detections"] != files_digest(folder, ids):
        return None
    if done.get("metrics") != file_digest(folder / "metrics.json"):  # replaced since
        return None
    metrics = in_class_order(nan_from_null(metrics), classes)
    if analyze and "false_positives" not in metrics:  # asked for now, not then
        return None
    if "coco" not in metrics:
        return None
    try:
        metrics["report"] = format_report(metrics)
    except (KeyError, TypeError, ValueError):
        return None
    metrics["out"] = str(folder)
    return metrics


def npz_path(folder: Path, image_id: str) -> Path:
    return folder / "detections" / f"{image_id}.npz"


def scan_saved(folder: Path, ids: list[str], inputs: dict[str, str]) -> dict[str, dict]:
    """The saved detections of ``ids`` that were made from the same inputs; a damaged file
    or one of a changed image or annotation is left out (to be made again)."""
    remove_temporaries(folder)
    kept, changed = {}, 0
    for image_id in ids:
        path = folder / f"{image_id}.npz"
        if not path.is_file():
            continue
        try:
            data = read_image_detections(path)
        except DamagedFileError as err:
            logger.warning("%s; detecting that image again", err)
            continue
        if str(data["inputs"]) != inputs[image_id]:
            changed += 1
            continue
        kept[image_id] = data
    if changed:
        logger.info("%d image(s) or annotation(s) changed since they were detected: detecting "
                    "them again", changed)  # fmt: skip
    return kept


def read_image_detections(path: Path) -> dict:
    """``boxes``, ``scores``, ``labels`` and the keys of :data:`ABOUT_KEYS` of one image."""
    data = load_npz(path, "per-image detections file")
    table = data.get("detections")
    try:
        about = json.loads(str(data["about"]))
        fits = table.ndim == 2 and table.shape[1] == 6 and all(k in about for k in ABOUT_KEYS)
    except (KeyError, ValueError, TypeError, AttributeError):
        fits = False
    if not fits:
        raise DamagedFileError(f"{path}: not a per-image detections file of `rcnn test`")
    boxes, scores, labels = table[:, :4], table[:, 4], table[:, 5].astype(np.int64)
    return {"boxes": boxes, "scores": scores, "labels": labels, **about}


def save_image_detections(path: Path, result, dets, objects: np.ndarray, inputs: str) -> dict:
    """One image's detections and how many of its objects the proposals found, atomically;
    returns what was written."""
    found = 0
    if result.boxes is not None and len(result.boxes) and len(objects):
        found = int((box_iou(objects, result.boxes).max(axis=1) >= PROPOSAL_IOU).sum())
    if dets is None:
        logger.warning("skipped %s", result.error)
    if dets is None:
        boxes, scores, labels = np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0, np.int64)
    else:  # to 0.1 pixel, as the result files hold them: both are scored alike
        boxes, scores, labels = np.round(dets.boxes, 1), dets.scores, dets.labels
    table = np.concatenate([boxes, scores[:, None], labels[:, None]], axis=1, dtype=np.float32)
    about = {"objects": len(objects), "found": found, "error": result.error or "",
             "inputs": inputs}  # fmt: skip
    arrays = {"detections": table, "about": np.asarray(json.dumps(about))}
    atomic_write_bytes(path, npz_bytes(arrays))
    return {"boxes": table[:, :4], "scores": table[:, 4], "labels": labels, **about}


def gather_detections(folder: Path, ids: list[str], saved: dict, num_classes: int):
    """Every image's results (``saved`` in memory, the others read from ``folder``):
    ``{label: (images [D], scores [D], boxes [D, 4])}`` for labels ``1..K``, image ``i``
    being ``ids[i]``, and the proposals' recall and the skipped images."""
    parts: dict[str, list] = {"images": [], "labels": [], "scores": [], "boxes": []}
    objects = found = 0
    skipped = []
    for i, image_id in enumerate(ids):
        data = saved.get(image_id)
        if data is None:
            path = folder / f"{image_id}.npz"
            try:
                data = read_image_detections(path)
            except FileNotFoundError:
                raise RcnnError(f"{path} is missing: run `rcnn test` again to finish") from None
        objects += int(data["objects"])
        found += int(data["found"])
        if str(data["error"]):
            skipped.append(str(data["error"]))
        parts["images"].append(np.full(len(data["scores"]), i, np.int64))
        for key in ("labels", "scores", "boxes"):
            parts[key].append(data[key])
    joined = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    boxes = joined["boxes"].reshape(-1, 4)
    detections = {}
    for k in range(1, num_classes + 1):
        mine = joined["labels"] == k
        detections[k] = (joined["images"][mine], joined["scores"][mine], boxes[mine])
    extra = {
        "proposal_recall": found / objects if objects else float("nan"),
        "objects": objects,
        "objects_found_by_proposals": found,
        "skipped": skipped,
    }
    return detections, extra
