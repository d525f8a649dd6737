"""COCO's detection metrics, by pycocotools' ``COCOeval``: AP averaged over IoU 0.50:0.05:0.95,
AP at IoU 0.5 and 0.75, AP of small, medium and large objects (areas below 32², up to 96²,
above), and the average recall at 100 detections an image.

For a COCO dataset the ground truth is its file as read (:mod:`rcnn.data.coco_file`: crowd
regions ignored by COCO's own rule, areas as the file gives them, boxes clipped to the image as
VOC's metrics see them). A VOC dataset is converted in memory: image ids are VOC's names as
numbers where they all are numbers (:func:`~rcnn.data.coco.coco_image_ids`, as ``rcnn synth
--coco`` writes them), category ``k`` is the ``k``-th class, a box's area is its width times
height, and a difficult object is a crowd region (COCO's way of an object that neither counts
nor penalizes; unlike VOC, a crowd region may absorb several detections).

As COCO's results files, each image of `rcnn test`'s own detections keeps its 100
highest-scored detections over all classes. A results file is read back by
:func:`read_results_file` and :func:`detections_of` and scored as it is: COCOeval's own cap
(100 detections an image and category) is the only one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcnn.data.annotations import boxes_to_coco, class_key, coco_to_boxes
from rcnn.data.coco import COCODataset, coco_image_ids
from rcnn.data.coco_file import finite_number, quiet
from rcnn.errors import RcnnError
from rcnn.files import DamagedFileError, parse_json, read_regular_file

MAX_PER_IMAGE = 100  # COCO's limit for a results file, and the largest maxDets of COCOeval
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class COCOTruth:
    """Ground truth as pycocotools holds it, and how the project's indices map onto it.

    Attributes:
        coco: the ``pycocotools.coco.COCO`` index.
        images: the COCO image id of each image of the split, in its order.
        categories: the COCO category id of each class, in class order.
    """

    coco: object
    images: list
    categories: list


def ground_truth(dataset, split: str, ids: list[str], classes: list[str]) -> COCOTruth:
    """The ground truth of ``ids`` for ``classes``: a COCO file's own, or a VOC dataset's
    converted (see the module's notes)."""
    from pycocotools.coco import COCO

    if isinstance(dataset, COCODataset):
        found = dataset.split(split)
        images = [found.names[i] for i in ids]
        return COCOTruth(found.coco, images, dataset.category_ids(split, classes))
    wanted = {class_key(c): k for k, c in enumerate(classes, start=1)}
    keys = coco_image_ids(ids)
    images, annotations = [], []
    for image_id, key in zip(ids, keys, strict=True):
        ann = dataset.annotation(image_id)
        images.append({"id": key, "width": ann.width, "height": ann.height})
        for o in ann.select(classes, keep_difficult=True):
            x, y, w, h = boxes_to_coco(np.array(o.box))[0].tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": key,
                    "category_id": wanted[class_key(o.name)],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(o.difficult),
                }
            )
    categories = [{"id": k, "name": c} for k, c in enumerate(classes, start=1)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with quiet():
        coco.createIndex()
    return COCOTruth(coco, keys, list(range(1, len(classes) + 1)))


def results_of(
    detections: dict, truth: COCOTruth, per_image: int | None = MAX_PER_IMAGE
) -> list[dict]:
    """COCO results entries (``image_id, category_id, bbox [x, y, w, h], score``) of
    ``detections`` (``{k: (image indices, scores, boxes)}``), each image's ``per_image`` best
    over all classes (``None``: every detection)."""
    parts = [(np.asarray(i, np.int64), np.asarray(s, float), np.asarray(b, float).reshape(-1, 4),
              np.full(len(s), k)) for k, (i, s, b) in detections.items()]  # fmt: skip
    if not parts:
        return []
    images, scores, boxes, labels = (np.concatenate(a) for a in zip(*parts, strict=True))
    order = np.lexsort((-scores, images))  # by image, best first
    ranked = images[order]
    rank = np.arange(len(order)) - np.searchsorted(ranked, ranked, side="left")
    keep = order if per_image is None else order[rank < per_image]  # by image, best first
    xywh = boxes_to_coco(boxes[keep])
    return [
        {
            "image_id": truth.images[i],
            "category_id": truth.categories[k - 1],
            "bbox": [round(v, 3) for v in box],
            "score": float(score),
        }
        for i, k, box, score in zip(
            images[keep].tolist(),
            labels[keep].tolist(),
            xywh.tolist(),
            scores[keep].tolist(),
            strict=True,
        )  # fmt: skip
    ]


def read_results_file(path: Path) -> list:
    """The entries of a COCO results file (a JSON list); anything else is an error naming it."""
    try:
        entries = parse_json(read_regular_file(path).decode("utf-8-sig"))
    except ValueError as err:  # not UTF-8, not JSON, nested too deeply
        raise DamagedFileError(f"--dets {path}: not a readable COCO results file ({err})") from None
    if not isinstance(entries, list):
        raise RcnnError(f"--dets {path}: a COCO results file is a JSON list of detections")
    return entries


def _result_id(value) -> int | str:
    """An image or category id of a results entry: a whole number (1.0 is 1) or a string."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if finite_number(value) and float(value).is_integer():
        return int(value)
    raise ValueError(f"ids are whole numbers or strings, not {value!r}")


def _entry(entry) -> tuple:
    """``(image id, category id, score, x, y, w, h)`` of a results entry; a ValueError says
    what is wrong with it."""
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in entry]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    image, category = _result_id(entry["image_id"]), _result_id(entry["category_id"])
    bbox, score = entry["bbox"], entry["score"]
    if not finite_number(score):
        raise ValueError(f"a score that is not a finite number: {score!r}")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(finite_number(v) for v in bbox)):
        raise ValueError(f"a bbox that is not 4 finite numbers: {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise ValueError(f"a bbox of negative width or height: {bbox!r}")
    if not (math.isfinite(x + w) and math.isfinite(y + h)):  # 1e308 + 1e308
        raise ValueError(f"a bbox whose far corner is not a finite number: {bbox!r}")
    return image, category, float(score), x, y, w, h


def detections_of(
    entries: list, truth: COCOTruth, classes: list[str], path: Path, where: str,
    aliases: dict | None = None,
) -> dict:  # fmt: skip
    """The detections ``{k: (image indices, scores, boxes)}`` of COCO results entries, the
    inverse of :func:`results_of`. An entry that is not a detection, or that names an image
    or category the ground truth lacks, is an error naming the file (and the entry).

    Args:
        aliases: other ids of the images (``{id: image index}``), e.g. a VOC dataset's names.
    """
    image_index = {key: i for i, key in enumerate(truth.images)} | (aliases or {})
    label_of = {key: k for k, key in enumerate(truth.categories, start=1)}
    rows = []
    for n, entry in enumerate(entries):
        try:
            rows.append(_entry(entry))
        except ValueError as err:
            raise RcnnError(
                f"--dets {path}: entry {n} is not {{image_id, category_id, bbox: [x, y, w, h], "
                f"score}} ({err})"
            ) from None
    unknown = sorted({str(r[0]) for r in rows if r[0] not in image_index})
    if unknown:
        raise RcnnError(
            f"--dets {path} names {len(unknown)} image id(s) not in {where}, e.g. "
            f"{unknown[0]}: results of another dataset or split?"
        )
    foreign = sorted({str(r[1]) for r in rows if r[1] not in label_of})
    if foreign:
        raise RcnnError(
            f"--dets {path} names category id(s) {foreign} that are not among {classes} of "
            f"{where}: results of another dataset?"
        )
    images = np.array([image_index[r[0]] for r in rows], np.int64)
    labels = np.array([label_of[r[1]] for r in rows], np.int64)
    scores = np.array([r[2] for r in rows], float)
    boxes = coco_to_boxes(np.array([r[3:] for r in rows], float))
    return {k: (images[labels == k], scores[labels == k], boxes[labels == k])
            for k in range(1, len(truth.categories) + 1)}  # fmt: skip


def evaluate_results(results: list[dict], truth: COCOTruth, classes: list[str]) -> dict:
    """COCOeval's twelve numbers (:data:`STATS`; NaN where COCO prints -1, e.g. no large
    object) and each class's AP@[.5:.95]."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with quiet():
        if results:
            found = truth.coco.loadRes([dict(r) for r in results])
        else:  # loadRes cannot take an empty list
            found = COCO()
            found.dataset = {"images": truth.coco.dataset["images"], "annotations": [],
                             "categories": truth.coco.dataset["categories"]}  # fmt: skip
            found.createIndex()
        run = COCOeval(truth.coco, found, "bbox")
        run.params.imgIds = list(truth.images)
        run.params.catIds = list(truth.categories)
        run.evaluate()
        run.accumulate()
        run.summarize()
    stats = [float(v) if v >= 0 else float("nan") for v in run.stats]
    # precision [IoU thresholds, recall points, categories, areas, maxDets]: area "all", 100
    # detections; the categories in COCOeval's order (sorted ids), not the classes'.
    precision = run.eval["precision"][:, :, :, 0, -1]
    order = [int(c) if isinstance(c, np.integer) else c for c in run.params.catIds]
    per_class = {}
    for cls, category in zip(classes, truth.categories, strict=True):
        mine = precision[:, :, order.index(category)]
        per_class[cls] = float(mine[mine > -1].mean()) if (mine > -1).any() else float("nan")
    return {**dict(zip(STATS, stats, strict=True)), "classes": per_class}


def format_coco(metrics: dict) -> str:
    """COCO's numbers on two lines."""
    names = [("AP", "AP@[.5:.95]"), ("AP50", "AP50"), ("AP75", "AP75"), ("APs", "APs"),
             ("APm", "APm"), ("APl", "APl"), ("AR100", "AR@100")]  # fmt: skip
    head = "".join(f"{label:>12}" for _, label in names)
    values = "".join(f"{metrics[key]:>12.3f}" for key, _ in names)
    return f"COCO metrics (pycocotools):\n{head}\n{values}"
