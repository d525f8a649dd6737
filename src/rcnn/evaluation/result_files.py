"""Result files: the VOC devkit's ``comp4_det_{split}_{class}.txt`` and COCO's results
JSON, written from detections and read back, and ``rcnn test --dets``, which scores such files
of any detector by both metric families without a network.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from rcnn.data.annotations import boxes_to_voc, check_split_name, class_key, voc_to_boxes
from rcnn.data.coco import COCODataset
from rcnn.data.readers import Dataset
from rcnn.errors import ConfigError, RcnnError
from rcnn.evaluation.coco_eval import detections_of, ground_truth, read_results_file
from rcnn.evaluation.detection_metrics import (
    check_classes_present,
    evaluate_detections,
    finish,
    load_ground_truth,
)
from rcnn.files import atomic_write_bytes, output_dir, read_regular_file

logger = logging.getLogger(__name__)

COCO_RESULTS = "coco_results.json"


def write_results(
    out: Path, split: str, classes: list[str], detections: dict, ids: list[str]
) -> None:
    """The devkit's ``comp4_det_{split}_{class}.txt``: ``id score xmin ymin xmax ymax``, VOC's
    1-based inclusive pixels. Scores keep 9 significant digits, enough to tell apart any two
    float32 scores, so the files rank detections exactly as the metrics do."""
    for k, cls in enumerate(classes, start=1):
        images, scores, boxes = detections[k]
        dataset = boxes_to_voc(boxes)
        lines = [
            f"{ids[i]} {score:.9g} {b[0]:.1f} {b[1]:.1f} {b[2]:.1f} {b[3]:.1f}\n"
            for i, score, b in zip(images.tolist(), scores.tolist(), dataset.tolist(), strict=True)
        ]
        atomic_write_bytes(out / result_file_name(split, cls), "".join(lines).encode())


def result_file_name(split: str, cls: str) -> str:
    return f"comp4_det_{split}_{cls}.txt"


def read_results(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Image ids, scores and project-convention boxes of one devkit result file."""
    try:
        text = read_regular_file(path).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise RcnnError(f"{path}: not a text result file ({err})") from None
    names, scores, boxes = [], [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 6:
                raise ValueError(f"{len(parts)} fields")
            values = [_number(v) for v in parts[1:]]
            if not np.isfinite(values).all():
                raise ValueError("a score or coordinate that is not a finite number")
        except ValueError as err:
            raise RcnnError(
                f"{path}:{lineno}: expected 'image_id score xmin ymin xmax ymax' ({err})"
            ) from None
        names.append(parts[0])
        scores.append(values[0])
        boxes.append(values[1:])
    return names, np.array(scores, float), voc_to_boxes(np.array(boxes, float).reshape(-1, 4))


def _number(text: str) -> float:
    """A score or coordinate of a result file: ``float``, but not Python's own spellings that
    no other reader takes (``0.5_5``, which ``float`` reads as 0.55)."""
    if "_" in text:
        raise ValueError(f"{text!r} is not a number")
    return float(text)


def coco_metrics(out: Path, truth, classes: list[str], detections, capped: bool = True) -> dict:
    """Writes ``out/coco_results.json`` of ``detections`` against ``truth`` (a
    :class:`~rcnn.evaluation.coco_eval.COCOTruth`) and returns COCO's metrics of it. ``capped``:
    each image keeps its 100 best detections over all classes, as COCO's results files (else
    every detection is scored, COCOeval capping each image and category as pycocotools does)."""
    from rcnn.evaluation.coco_eval import MAX_PER_IMAGE, evaluate_results, results_of

    results = results_of(detections, truth, MAX_PER_IMAGE if capped else None)
    atomic_write_bytes(out / COCO_RESULTS, json.dumps(results).encode())
    return evaluate_results(results, truth, classes)


def result_files(folder: Path, split: str, competition: str | None = None) -> dict[str, Path]:
    """``{class: file}`` of the devkit result files ``{competition}_det_{split}_{class}.txt``
    in ``folder``; two competitions' files for one class are an error unless one is chosen."""
    pattern = re.compile(rf"^(\w+?)_det_{re.escape(split)}_(.+)\.txt$")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        m = pattern.match(path.name)
        if m and (competition is None or m.group(1) == competition):
            found.setdefault(m.group(2), []).append(path)
    for cls, paths in found.items():
        if len(paths) > 1:
            raise ConfigError(
                f"--dets {folder} has {len(paths)} result files for {cls} "
                f"({', '.join(p.name for p in paths)}): choose one with --competition "
                f"{paths[0].name.split('_det_')[0]}"
            )
    return {cls: paths[0] for cls, paths in found.items()}


def evaluate_result_files(
    dets: str,
    dataset: Dataset,
    split: str,
    classes: list[str] | None,
    out: str | None,
    competition: str | None = None,
    analyze: bool = False,
) -> dict:
    """``rcnn test --dets DIR`` (devkit result files) or ``--dets FILE.json`` (a COCO results
    file): scores existing detections of a split by both metric families."""
    check_split_name(split)
    path = Path(dets)
    if path.is_file() and path.suffix.lower() == ".json":
        if out is None:
            raise ConfigError(f"--dets {path} is a COCO results file: pass --out for the metrics")
        own = (Path(out) / COCO_RESULTS).resolve() == path.resolve()
        if own or (Path(out) / "settings.json").is_file():
            raise ConfigError(
                f"--out {out} holds an `rcnn test` run or the results file itself, which the "
                "new metrics would replace: choose another --out"
            )
        names, detections, coco_truth = _read_coco_results(path, dataset, split, classes)
    else:
        if out is not None and (Path(out) / "settings.json").is_file():
            raise ConfigError(
                f"--out {out} holds an `rcnn test` run, whose metrics the new ones would "
                "replace: choose another --out"
            )
        names, detections = _read_result_folder(path, dataset, split, classes, out, competition)
        coco_truth = ground_truth(dataset, split, dataset.ids(split), names)
    ids = dataset.ids(split)
    truth = load_ground_truth(dataset, ids, names)
    if classes is None and path.is_dir():
        _check_every_class(path, truth, names, split, competition)
    check_classes_present(truth, names, dataset.describe(split))
    target = output_dir(out) if out else path
    metrics = evaluate_detections(detections, truth, names, analyze, dataset.groups(split))
    # Another detector's files are scored as they are: COCOeval's own cap is the only one.
    metrics["coco"] = coco_metrics(target, coco_truth, names, detections, capped=False)
    metrics.update(split=split, dets=str(path), images=len(ids))
    finish(target, metrics)
    return metrics


def _check_every_class(folder: Path, truth, names: list[str], split: str, competition) -> None:
    """Refuses a folder without the result file of a class that the split's annotations name:
    scored over the other classes alone, its mean AP would not be the detector's. (A class's
    empty file is a detector that found none: AP 0. A COCO results file has no file a class,
    and a category it never names is such a class.)"""
    have = {class_key(n) for n in names}
    missing = sorted(n for n in truth.names if class_key(n) not in have)
    if missing:
        prefix = (
            competition or next(iter(result_files(folder, split).values())).name.split("_det_")[0]
        )
        raise FileNotFoundError(
            f"--dets {folder}: no result file for {missing}, which the split's annotations "
            f"name: expected {folder / (prefix + '_det_' + split + '_' + missing[0] + '.txt')} "
            "(an empty file if the detector found none), or choose the classes with --classes"
        )


def _read_result_folder(folder: Path, dataset, split, classes, out, competition):
    if folder.is_file():
        raise ConfigError(
            f"--dets {folder} is a file: give the folder of the devkit result files "
            "(*_det_SPLIT_CLASS.txt), or a COCO results file ending in .json"
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"--dets {folder}: folder (or COCO results .json) not found")
    if out is None and (folder / "settings.json").is_file():
        raise ConfigError(
            f"--dets {folder} is the output of an `rcnn test` run, whose metrics.json (with the "
            "proposals' recall) this would replace: pass --out for the new metrics"
        )
    files = result_files(folder, split, competition)
    if classes:
        missing = [c for c in classes if c not in files]
        if missing:
            raise FileNotFoundError(
                f"--dets {folder}: no result file for {missing} (expected e.g. "
                f"{result_file_name(split, missing[0])})"
            )
        files = {c: files[c] for c in classes}
    if not files:
        raise RcnnError(f"--dets {folder}: no result file named like *_det_{split}_CLASS.txt")
    index = {image_id: i for i, image_id in enumerate(dataset.ids(split))}
    detections = {}
    for k, cls in enumerate(files, start=1):
        images, scores, boxes = read_results(files[cls])
        unknown = sorted(set(images) - set(index))
        if unknown:
            raise RcnnError(
                f"{files[cls]} names {len(unknown)} image(s) not in {dataset.describe(split)}, "
                f"e.g. {unknown[0]}: results of another dataset or split?"
            )
        detections[k] = (np.array([index[i] for i in images], np.int64), scores, boxes)
    return list(files), detections


def _read_coco_results(path: Path, dataset, split: str, classes: list[str] | None):
    """The classes, detections and COCO ground truth of a COCO results file: a list of ``{image_id,
    category_id, bbox: [x, y, w, h], score}``, ids of the dataset's file (of a VOC dataset:
    its image ids or names, and category ``k`` the ``k``-th of ``--classes``, as `rcnn test`
    writes)."""
    entries = read_results_file(path)
    if classes is None:
        if not isinstance(dataset, COCODataset):
            raise ConfigError(
                f"--dets {path} on a VOC dataset needs --classes: category k is the k-th class"
            )
        # Every category, as COCO's own evaluation: one never detected counts in the means.
        classes = list(dataset.split(split).categories.values())
        logger.info("--dets %s: evaluating every category of %s (--classes chooses)", path,
                    dataset.describe(split))  # fmt: skip
    ids = dataset.ids(split)
    truth = ground_truth(dataset, split, ids, classes)
    names = {} if isinstance(dataset, COCODataset) else {name: i for i, name in enumerate(ids)}
    detections = detections_of(entries, truth, classes, path, dataset.describe(split), names)
    return list(classes), detections, truth
