"""One image's trip through the detector, stage by stage, as data.

Every number comes from the detector's own code: the proposals from its proposal source and
cache, the scores from :meth:`Detector.forward` and :meth:`Detector.scored`, what NMS keeps
from :func:`select_rows` (the selection :func:`select_detections` makes), the labels from
``rcnn prepare``'s :func:`label_image` with the run's rules, the warped regions from the
detector's feeder. So the kept boxes are exactly the detector's output for the image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rcnn.data.annotations import VOCAnnotation
from rcnn.data.config import PrepareConfig
from rcnn.data.feeders import make_feeder
from rcnn.data.images import image_size, read_image
from rcnn.data.labels import BACKGROUND, LabelConfig
from rcnn.data.prepare import ImageRegions, label_image
from rcnn.data.proposal_files import proposal_source
from rcnn.data.regions import RegionSet
from rcnn.data.voc import parse_annotation
from rcnn.data.warps import ImageStore
from rcnn.detection.detector import Detections, Detector, detections_at, select_rows
from rcnn.errors import RcnnError
from rcnn.files import parse_json, read_regular_file
from rcnn.ops.boxes import box_iou

logger = logging.getLogger(__name__)

GRID = 8  # warped regions of each kind (objects, background) shown


@dataclass
class Rules:
    """The labelling rules of the run's regions (``rcnn prepare``'s summary.json), and where
    they came from."""

    labels: LabelConfig
    source: str  # the summary.json read, or why the defaults are used
    search: str  # the proposals the run's regions were made of ("fast", a file, ...)


@dataclass
class Truth:
    """An annotation's objects and the proposals labelled by the run's rules."""

    regions: ImageRegions  # exactly what `rcnn prepare` stores for the image
    status: np.ndarray  # int8 [N] per proposal: 1 object, 0 background, -1 left out
    best: np.ndarray  # int64 [G] the proposal overlapping each object most
    best_iou: np.ndarray  # float32 [G] its IoU
    ious: np.ndarray  # float32 [N] each proposal's best IoU with an object
    rules: Rules

    def recall(self, iou: float) -> float:
        """The share of objects that some proposal overlaps by ``iou`` or more."""
        return float((self.best_iou >= iou).mean()) if len(self.best_iou) else float("nan")


@dataclass
class Explanation:
    """One image through the detector.

    ``proposals`` are the boxes scored; ``scores [N, K]`` their scores for each object class
    (the softmax probability or the SVM's margin, ``scorer``); ``moved [N, K, 4]`` each box
    moved by each class's regressor (``None`` without box regression). Boxes scoring at
    least ``threshold`` are the candidates of NMS (``candidates`` of them); ``kept_rows`` and
    ``kept_labels`` (``1..K``) say which proposal and class each detection is; ``before`` and
    ``after`` are its box before and after box regression, and ``detections`` are what the
    detector returns for the image (``after`` its boxes).
    """

    path: str
    image: np.ndarray  # uint8 [H, W, 3] RGB
    classes: list[str]
    scorer: str
    threshold: float
    nms: float
    proposals: np.ndarray  # int32 [N, 4]
    scores: np.ndarray  # float32 [N, K]
    moved: np.ndarray | None  # float32 [N, K, 4]
    candidates: int
    kept_rows: np.ndarray  # int64 [D]
    kept_labels: np.ndarray  # int64 [D], 1..K
    detections: Detections
    warp: dict  # input size, context padding (pixels of the warped region), normalization
    warped: np.ndarray  # uint8 [M, S, S, 3]: regions as the network sees them, de-normalized
    warped_rows: np.ndarray  # int64 [M]: the proposal of each
    truth: Truth | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]

    @property
    def before(self) -> np.ndarray:
        """float32 ``[D, 4]``: each detection's proposal."""
        return self.proposals[self.kept_rows].astype(np.float32)

    @property
    def after(self) -> np.ndarray:
        """float32 ``[D, 4]``: each detection's box (moved by its class's regressor)."""
        return self.detections.boxes


def explain_image(core: Detector, path: str, annotation: VOCAnnotation | None = None):
    """The :class:`Explanation` of one image file, labelled against ``annotation`` (its
    objects of the model's classes) when one is given."""
    with proposal_source(core.proposals(), core.cfg.cache_dir, core.cfg.workers) as pool:
        result = pool.compute([path], False)[0]
    if result.error:
        raise RcnnError(result.error)
    proposals = np.asarray(result.boxes, np.int32).reshape(-1, 4)
    variant = core.variants[0]
    if len(proposals):
        out = core.forward([path], [proposals], [result.size])[0]
        boxes, scores = core.scored(proposals, out, result.size, variant)
    else:
        boxes, scores = proposals, np.zeros((0, len(core.classes)), np.float32)
    threshold = core.cfg.threshold(variant.scorer)
    caps = (core.cfg.max_per_class, core.cfg.max_per_image)
    rows, cols = select_rows(boxes, scores, threshold, core.cfg.nms, *caps)
    detections = detections_at(boxes, scores, rows, cols)  # what core.postprocess returns
    image = cv2.cvtColor(read_image(path), cv2.COLOR_BGR2RGB)
    truth = label_truth(core, result, annotation) if annotation is not None else None
    chosen = warped_choice(scores, truth)
    scorer = variant.scorer
    if scorer == "svm":
        scorer = f"svm ({core.svms[core.svm_folder(variant)].layer})"
    warp = core.warp
    return Explanation(
        path,
        image,
        list(core.classes),
        scorer,
        float(threshold),
        core.cfg.nms,
        proposals,
        np.asarray(scores, np.float32),
        boxes if variant.bbox_reg else None,
        int(((scores >= threshold) & (scores > -np.inf)).sum()),
        rows,
        cols + 1,
        detections,
        {"size": warp.size, "pad": warp.pad, "mean": list(warp.mean), "std": list(warp.std)},
        warped_regions(core, path, result.size, proposals[chosen]),
        chosen,
        truth,
    )


def label_truth(core: Detector, result, annotation: VOCAnnotation) -> Truth:
    """The proposals labelled as ``rcnn prepare`` labels them, by the run's rules."""
    rules = run_rules(core.source)
    # label_image reads the classes and the rules alone; the dataset is the annotation.
    cfg = PrepareConfig(".", "", classes=list(core.classes), labels=rules.labels)
    regions = label_image(cfg, annotation, result)
    kept = {
        tuple(b): int(label)
        for b, label in zip(regions.boxes.tolist(), regions.labels, strict=True)
    }
    proposals = np.asarray(result.boxes, np.int32).reshape(-1, 4)
    status = np.array(
        [-1 if (k := kept.get(tuple(b))) is None else int(k != BACKGROUND) for b in proposals],
        np.int8,
    )
    gt = regions.gt_boxes
    if len(gt) and len(proposals):
        iou = box_iou(gt, proposals)  # [G, N]
        best = iou.argmax(axis=1)
        best_iou, ious = iou[np.arange(len(gt)), best], iou.max(axis=0)
    else:
        best, best_iou, ious = np.zeros(len(gt)), np.zeros(len(gt)), np.zeros(len(proposals))
    return Truth(
        regions,
        status,
        best.astype(np.int64),
        best_iou.astype(np.float32),
        ious.astype(np.float32),
        rules,
    )


def run_rules(source: str) -> Rules:
    """The labelling rules of the regions a model was trained on: its run's ``config.json``
    names the ``rcnn prepare`` folder, whose ``summary.json`` has them. Without either, the
    default rules (``--preset seed``), and :attr:`Rules.source` says why."""
    run = Path(source).parent
    try:
        data = Path(parse_json((run / "config.json").read_text())["data"])
        summary = parse_json((data / "summary.json").read_text())
        labels = LabelConfig(**summary["labels"])
        found = summary.get("proposals") or {}
        search = found.get("tag") or found.get("mode") or "unknown"
        return Rules(labels, str(data / "summary.json"), str(search))
    except (OSError, ValueError, KeyError, TypeError, RcnnError) as err:
        logger.info("the rules of %s's regions are not readable (%s): the defaults", run, err)
        why = f"the defaults (--preset seed): the run's regions are not readable ({err})"
        return Rules(LabelConfig(), why, "unknown")


def warped_choice(scores: np.ndarray, truth: Truth | None, count: int = GRID) -> np.ndarray:
    """Which proposals to show warped: with an annotation the objects overlapping their
    object most and background regions across the range of IoU; without, the best- and the
    worst-scored proposals (by their best class). Deterministic: ties go to the first."""
    if truth is None:
        order = np.argsort(-scores.max(axis=1, initial=-np.inf), kind="stable")
        return np.unique(np.r_[order[:count], order[-count:]]) if len(order) else order
    rows = np.flatnonzero(truth.status >= 0)
    positives = rows[truth.status[rows] == 1]
    negatives = rows[truth.status[rows] == 0]
    positives = positives[np.argsort(-truth.ious[positives], kind="stable")][:count]
    if len(negatives) > count:  # spread over the range of IoU, highest first
        negatives = negatives[np.argsort(-truth.ious[negatives], kind="stable")]
        negatives = negatives[np.linspace(0, len(negatives) - 1, count).round().astype(int)]
    return np.r_[positives, negatives].astype(np.int64)


def warped_regions(core: Detector, path: str, size, boxes: np.ndarray) -> np.ndarray:
    """The regions ``boxes [M, 4]`` as the network receives them (the detector's feeder:
    warped with its context padding, normalized), de-normalized to uint8 ``[M, S, S, 3]``."""
    warp = core.warp
    if len(boxes) == 0:
        return np.zeros((0, warp.size, warp.size, 3), np.uint8)
    zeros = np.zeros(len(boxes))
    regions = RegionSet(
        [path], np.zeros(len(boxes), np.int64), boxes, zeros, zeros, core.classes, [size]
    )
    store = ImageStore.of(regions, 1)
    feeder = make_feeder(
        regions, [list(range(len(boxes)))], warp, core.device, workers=1, store=store
    )
    batch = next(iter(feeder))[0].float().cpu()  # [M, 3, S, S], normalized
    mean = np.asarray(warp.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(warp.std, np.float32).reshape(1, 3, 1, 1)
    pixels = (batch.numpy() * std + mean) * 255
    return np.clip(pixels.round(), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def check_annotation(
    annotation: VOCAnnotation, xml: str, image: str, size, by_name: bool = True
) -> None:
    """Refuses the annotation of another image: its file name (without the extension, when
    ``by_name``) or its size differ from the image's."""
    named = Path(annotation.filename).name
    if by_name and Path(named).stem != Path(image).stem:
        raise RcnnError(
            f"--annotation {xml} is of image {named}, not of {Path(image).name}; give the "
            "annotation of this image"
        )
    width, height = size
    if (annotation.width, annotation.height) not in ((0, 0), (width, height)):
        raise RcnnError(
            f"--annotation {xml} says the image is {annotation.width}x{annotation.height}, but "
            f"{image} is {width}x{height}: it is the annotation of another image"
        )


def explain_path(core: Detector, path: str, xml=None, by_name: bool = True) -> Explanation:
    """:func:`explain_image` of an image file with its VOC annotation ``xml`` (see
    :func:`read_inputs`)."""
    return explain_image(core, path, read_inputs(path, xml, by_name))


def read_inputs(path: str, xml=None, by_name: bool = True) -> VOCAnnotation | None:
    """Checks that ``path`` is a readable image and reads its annotation ``xml``, refused
    when it is of another image (by its file name when ``by_name``, and by its size)."""
    size = image_size(read_regular_file(path))  # a missing image: FileNotFoundError
    if size is None:
        raise RcnnError(f"{path}: not a readable image")
    if xml is None:
        return None
    annotation = parse_annotation(xml)
    check_annotation(annotation, str(xml), path, size, by_name)
    return annotation
