"""``rcnn test``: the detector over every image of a VOC split, the devkit's result files, and
their average precision by the devkit's rules.

Each image's detections are written to ``OUT/detections/{id}.npz`` as soon as it is done
(atomically), so a killed run continues where it stopped; the result files
``comp4_det_{split}_{class}.txt`` and the metrics are made from them at the end. Under
torchrun the images are shared out among the processes and rank 0 writes the results.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from rcnn.data.voc import VOCDataset, boxes_to_voc, parse_annotation, read_id_file, voc_to_boxes
from rcnn.detection.config import DetectorConfig, Variant, eval_detector_config
from rcnn.errors import RcnnError
from rcnn.evaluation.voc_eval import GroundTruth, evaluate_class
from rcnn.files import atomic_write_bytes, atomic_write_json, file_identity, output_lock
from rcnn.ops.boxes import box_iou

logger = logging.getLogger(__name__)

PROPOSAL_IOU = 0.5  # a ground-truth object counts as found by the proposals at this overlap


@dataclass
class VOCTestConfig:
    model: str
    voc_root: str
    out: str
    split: str = "test"
    classes: list[str] | None = None  # needed with a plain state dict (model.pth)
    detector: DetectorConfig = field(default_factory=eval_detector_config)
    overwrite: bool = False
    progress: bool = True
    variants: list[Variant] | None = None  # several: the ablation, one subfolder each


def load_ground_truth(voc: VOCDataset, ids: list[str], classes: list[str]) -> dict:
    """``{class: {image id: GroundTruth}}`` of every image, difficult objects flagged."""
    truth: dict[str, dict[str, GroundTruth]] = {c: {} for c in classes}
    for image_id in ids:
        objects = parse_annotation(voc.annotation_path(image_id)).select(classes, True)
        for cls in classes:
            mine = [o for o in objects if o.name == cls]
            boxes = np.array([o.box for o in mine], np.float64).reshape(-1, 4)
            truth[cls][image_id] = GroundTruth(boxes, np.array([o.difficult for o in mine], bool))
    return truth


def split_images(voc: VOCDataset, split: str) -> list[str]:
    """Every image id of ``{split}.txt``; a listed image that is missing is an error."""
    ids = read_id_file(voc.split_path(split))
    missing = [i for i in ids if not voc.image_path(i).is_file()]
    if missing:
        raise RcnnError(
            f"{voc.split_path(split)} names {len(missing)} image(s) missing from "
            f"{voc.root / 'JPEGImages'}, e.g. {missing[0]}.jpg"
        )
    if not ids:
        raise RcnnError(f"{voc.split_path(split)} lists no image")
    return ids


def run_test(cfg: VOCTestConfig) -> dict:
    """Detects on every image of the split (or the images still missing after a kill) and
    evaluates; returns the metrics, or with several ``cfg.variants`` the metrics of each
    (each variant in its own subfolder of ``cfg.out``, all from one forward pass)."""
    from rcnn.detection.detector import Detector
    from rcnn.modeling.trained import load_model
    from rcnn.training.distributed import init_world, shutdown

    voc = VOCDataset(cfg.voc_root)
    ids = split_images(voc, cfg.split)
    loaded = load_model(cfg.model, cfg.classes)
    truth = load_ground_truth(voc, ids, loaded.classes)
    out = Path(cfg.out)
    world, device = init_world(cfg.detector.device)
    variants = list(cfg.variants or [cfg.detector.variant])
    detector = Detector(loaded, replace(cfg.detector, device=device), variants)
    folders = {v.name: out / v.name if len(variants) > 1 else out for v in variants}
    with contextlib.ExitStack() as stack:
        stack.callback(shutdown)
        if world.is_main:  # rank 0 holds the folder for the whole run
            out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(output_lock(out, "rcnn test"))
        return _run_locked(cfg, voc, ids, loaded, truth, world, detector, variants, folders)


def _run_locked(cfg, voc, ids, loaded, truth, world, detector, variants, folders) -> dict:
    from rcnn.training.distributed import barrier

    if world.is_main:
        for v in variants:
            settings = _settings(cfg, voc, loaded, v, detector)
            claim_test_folder(folders[v.name], settings, cfg.overwrite)
    barrier()
    mine = ids[world.rank :: world.size]
    todo = [i for i in mine if not all(_npz_path(f, i).is_file() for f in folders.values())]
    if len(todo) < len(mine):
        done = len(mine) - len(todo)
        logger.info("%d of %d images already done in %s", done, len(mine), cfg.out)
    paths = [str(voc.image_path(i)) for i in todo]
    by_path = dict(zip(paths, todo, strict=True))
    for result, found in detector.run_variants(paths, cfg.progress and world.is_main):
        image_id = by_path[result.path]
        for v in variants:
            dets = None if found is None else found[v.name]
            save_image_detections(_npz_path(folders[v.name], image_id), result, dets, truth)
    barrier()
    if not world.is_main:
        return {}
    results = {v.name: _evaluate_folder(folders[v.name], cfg, ids, loaded, truth) for v in variants}
    return results[variants[0].name] if len(variants) == 1 else results


def _npz_path(folder: Path, image_id: str) -> Path:
    return folder / "detections" / f"{image_id}.npz"


def _evaluate_folder(folder: Path, cfg, ids: list[str], loaded, truth: dict) -> dict:
    detections, extra = load_detections(folder / "detections", ids, len(loaded.classes))
    write_results(folder, cfg.split, loaded.classes, detections)
    metrics = evaluate_detections(detections, truth, loaded.classes)
    metrics.update(extra)
    metrics.update(split=cfg.split, model=loaded.source, images=len(ids))
    finish(folder, metrics)
    return metrics


def _settings(cfg: VOCTestConfig, voc: VOCDataset, loaded, variant, detector) -> dict:
    """What makes the detections what they are: a run with other settings starts afresh."""
    det = asdict(cfg.detector)
    keys = ("score_thresh", "keep_all", "nms", "max_per_image", "max_per_class", "mode",
            "max_side")  # fmt: skip
    heads = {}
    if variant.scorer == "svm":
        heads["svm"] = file_identity(detector.svm_folder / "svm.npz")
    if variant.bbox_reg:
        heads["bbox"] = file_identity(detector.bbox_folder / "bbox.npz")
    return {
        "model": file_identity(loaded.source),
        "device": detector.device.type,
        "amp": detector.train.amp,  # precision changes scores: a resume must not mix them
        "classes": loaded.classes,
        "voc_root": str(voc.root.resolve()),
        "split": cfg.split,
        "variant": asdict(variant),
        **heads,
        **{k: det[k] for k in keys},
    }


def claim_test_folder(out: Path, settings: dict, overwrite: bool) -> None:
    """Keeps the detections of an interrupted run with the same settings; refuses those of
    other settings. ``overwrite`` clears whatever is there."""
    path = out / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old == settings and not overwrite:
            return
        if not overwrite:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            raise RcnnError(
                f"--out {out} holds detections made with other settings ({', '.join(changed)}); "
                "choose another --out or pass --overwrite"
            )
        shutil.rmtree(out / "detections", ignore_errors=True)
    atomic_write_json(path, settings)


def save_image_detections(path: Path, result, dets, truth: dict) -> None:
    """One image's detections and how many of its objects the proposals found, atomically."""
    image_id = path.stem
    objects = [gt.boxes[~gt.difficult] for gt in (t[image_id] for t in truth.values())]
    objects = np.concatenate(objects) if objects else np.zeros((0, 4))
    found = 0
    if result.boxes is not None and len(result.boxes) and len(objects):
        found = int((box_iou(objects, result.boxes).max(axis=1) >= PROPOSAL_IOU).sum())
    if dets is None:
        logger.warning("skipped %s", result.error)
    empty = dets is None
    buf = io.BytesIO()
    np.savez(
        buf,
        boxes=np.zeros((0, 4), np.float32) if empty else dets.boxes,
        scores=np.zeros(0, np.float32) if empty else dets.scores,
        labels=np.zeros(0, np.int64) if empty else dets.labels,
        objects=len(objects),
        found=found,
        error=result.error or "",
    )
    atomic_write_bytes(path, buf.getvalue())


def _load_npz(folder: Path, image_id: str):
    path = folder / f"{image_id}.npz"
    try:
        return np.load(path)
    except (OSError, ValueError) as err:
        raise RcnnError(f"{path}: unreadable ({err}); delete it and run again") from err


def load_detections(folder: Path, ids: list[str], num_classes: int) -> tuple[dict, dict]:
    """Every image's saved results, read once: ``{label: (image ids, scores, boxes)}`` for
    labels ``1..K``, and the proposals' recall and the skipped images."""
    parts = {k: ([], [], []) for k in range(1, num_classes + 1)}
    objects = found = 0
    skipped = []
    for image_id in ids:
        with _load_npz(folder, image_id) as data:
            labels, scores, boxes = data["labels"], data["scores"], data["boxes"]
            objects += int(data["objects"])
            found += int(data["found"])
            if str(data["error"]):
                skipped.append(str(data["error"]))
        for k, (names, s, b) in parts.items():
            mine = labels == k
            names += [image_id] * int(mine.sum())
            s.append(scores[mine])
            b.append(boxes[mine])
    detections = {
        k: (names, np.concatenate(s), np.concatenate(b).reshape(-1, 4))
        for k, (names, s, b) in parts.items()
    }
    extra = {
        "proposal_recall": found / objects if objects else float("nan"),
        "objects": objects,
        "objects_found_by_proposals": found,
        "skipped": skipped,
    }
    return detections, extra


def write_results(out: Path, split: str, classes: list[str], detections: dict) -> None:
    """The devkit's ``comp4_det_{split}_{class}.txt``: ``id score xmin ymin xmax ymax``, VOC's
    1-based inclusive pixels. Scores keep 9 significant digits, enough to tell apart any two
    float32 scores, so the files rank detections exactly as the metrics do."""
    for k, cls in enumerate(classes, start=1):
        names, scores, boxes = detections[k]
        voc = boxes_to_voc(boxes)
        lines = [
            f"{name} {score:.9g} {b[0]:.1f} {b[1]:.1f} {b[2]:.1f} {b[3]:.1f}\n"
            for name, score, b in zip(names, scores.tolist(), voc.tolist(), strict=True)
        ]
        atomic_write_bytes(out / result_file_name(split, cls), "".join(lines).encode())


def result_file_name(split: str, cls: str) -> str:
    return f"comp4_det_{split}_{cls}.txt"


def read_results(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Image ids, scores and project-convention boxes of one devkit result file."""
    names, scores, boxes = [], [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 6:
                raise ValueError(f"{len(parts)} fields")
            values = [float(v) for v in parts[1:]]
        except ValueError as err:
            raise RcnnError(
                f"{path}:{lineno}: expected 'image_id score xmin ymin xmax ymax' ({err})"
            ) from None
        names.append(parts[0])
        scores.append(values[0])
        boxes.append(values[1:])
    return names, np.array(scores, float), voc_to_boxes(np.array(boxes, float).reshape(-1, 4))


STRICT_IOU = 0.7  # a second, stricter overlap, where box regression shows


def evaluate_detections(detections: dict, truth: dict, classes: list[str]) -> dict:
    """Per-class and mean AP (VOC2007 11-point and area under the curve) and final recall, and
    the 11-point mean AP at IoU > 0.7 (localization)."""
    per_class = {}
    for k, cls in enumerate(classes, start=1):
        names, scores, boxes = detections[k]
        unknown = sorted(set(names) - set(truth[cls]))
        if unknown:
            raise RcnnError(
                f"detections of {cls} name {len(unknown)} image(s) not in the split, "
                f"e.g. {unknown[0]}"
            )
        per_class[cls] = evaluate_class(names, scores, boxes, truth[cls])
        strict = evaluate_class(names, scores, boxes, truth[cls], STRICT_IOU)
        per_class[cls]["ap_07_strict"] = strict["ap_07"]
    counted = [c for c in per_class.values() if c["positives"]]
    if len(counted) < len(per_class):
        empty = [name for name, c in per_class.items() if not c["positives"]]
        logger.warning("no (non-difficult) object of %s in the split: AP undefined, left out "
                       "of the mean", empty)  # fmt: skip
    nan = float("nan")
    return {
        "classes": per_class,
        "map_07": float(np.mean([c["ap_07"] for c in counted])) if counted else nan,
        "map": float(np.mean([c["ap"] for c in counted])) if counted else nan,
        "map_07_strict": float(np.mean([c["ap_07_strict"] for c in counted])) if counted else nan,
    }


def evaluate_result_files(
    dets: str, voc_root: str, split: str, classes: list[str] | None, out: str | None
) -> dict:
    """``rcnn test --dets DIR``: scores existing devkit result files of a split."""
    folder = Path(dets)
    if not folder.is_dir():
        raise FileNotFoundError(f"--dets {folder}: folder not found")
    pattern = re.compile(rf"^\w+_det_{re.escape(split)}_(.+)\.txt$")
    files = {m.group(1): p for p in sorted(folder.iterdir()) if (m := pattern.match(p.name))}
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
    voc = VOCDataset(voc_root)
    ids = read_id_file(voc.split_path(split))
    names = list(files)
    truth = load_ground_truth(voc, ids, names)
    detections = {k: read_results(files[c]) for k, c in enumerate(names, start=1)}
    metrics = evaluate_detections(detections, truth, names)
    metrics.update(split=split, dets=str(folder), images=len(ids))
    finish(Path(out) if out else folder, metrics)
    return metrics


def finish(out: Path, metrics: dict) -> None:
    """Writes ``metrics.json`` and ``pr.png`` and adds the printable report to ``metrics``."""
    from rcnn.evaluation.plots import plot_pr_grid

    curves = {c: m.pop("curve") for c, m in metrics["classes"].items()}
    plot_pr_grid(
        {c: (r, p, metrics["classes"][c]["ap"]) for c, (r, p) in curves.items()},
        out / "pr.png",
        title=f"Detection precision-recall, {metrics['split']} split",
    )
    atomic_write_json(out / "metrics.json", metrics)
    metrics["report"] = format_report(metrics)
    metrics["out"] = str(out)


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
    return "\n".join(lines)
