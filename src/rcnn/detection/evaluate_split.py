"""``rcnn test``: the detector over every image of a split (VOC or COCO), the devkit's result
files and a COCO results file, and their average precision by the devkit's rules and by
COCO's (:mod:`rcnn.evaluation.coco_eval`).

Each image's detections are written to ``OUT/detections/{id}.npz`` as soon as it is done
(atomically), with a digest of the image and its annotation: a killed run continues where it
stopped, and an image or annotation changed since is detected again. The result files
``comp4_det_{split}_{class}.txt`` and the metrics are made from them at the end. Under
torchrun the images are shared out among the processes and rank 0 writes the results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from rcnn.data.coco import COCODataset
from rcnn.data.datasets import Dataset, check_source, open_dataset
from rcnn.data.voc import VOC_GROUPS, boxes_to_voc, check_split_name, voc_to_boxes
from rcnn.detection.config import DetectorConfig, Variant, eval_detector_config
from rcnn.errors import ConfigError, RcnnError
from rcnn.evaluation.coco_eval import detections_of, ground_truth, read_results_file
from rcnn.evaluation.voc_eval import ClassTruth, ImageTruth, evaluate_flat
from rcnn.files import (
    DamagedFileError,
    atomic_write_bytes,
    atomic_write_json,
    file_digest,
    is_regular_file,
    load_npz,
    npz_bytes,
    output_dir,
    read_json,
    read_regular_file,
    remove_temporaries,
)
from rcnn.ops.boxes import box_iou
from rcnn.runtime.stage import run_stage

logger = logging.getLogger(__name__)

PROPOSAL_IOU = 0.5  # a ground-truth object counts as found by the proposals at this overlap
# A per-image file: "detections", float32 [D, 6] rows (x1, y1, x2, y2, score, label), and
# "about", a JSON object: objects, found, error, inputs. Two arrays, because each array of an
# .npz costs a header parse on reading, and a resume reads thousands of them.
ABOUT_KEYS = ("objects", "found", "error", "inputs")


@dataclass
class VOCTestConfig:
    model: str
    voc_root: str | None  # a VOC folder, or None with coco and images
    out: str
    split: str = "test"
    classes: list[str] | None = None  # needed with a plain state dict (model.pth)
    detector: DetectorConfig = field(default_factory=eval_detector_config)
    overwrite: bool = False
    progress: bool = True
    variants: list[Variant] | None = None  # several: the ablation, one subfolder each
    analyze: bool = False  # the paper's analysis of the top false positives
    coco: str | None = None  # COCO instances file of the split ({split} is replaced)
    images: str | None = None  # its images' folder

    def __post_init__(self):
        check_source(self.voc_root, self.coco, self.images)
        check_split_name(self.split)

    def dataset(self):
        return open_dataset(self.voc_root, self.coco, self.images)


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


def load_ground_truth(voc: Dataset, ids: list[str], classes: list[str]) -> SplitTruth:
    """The boxes of ``classes`` in every image of ``ids``, difficult objects flagged."""
    per_class: dict[str, dict] = {c: {} for c in classes}
    objects, sizes, names = {}, {}, set()
    for image_id in ids:
        annotation = voc.annotation(image_id)
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


def split_images(voc: Dataset, split: str) -> list[str]:
    """Every image id of the split; a listed image that is missing or is not a plain file (a
    FIFO, a device) is an error."""
    ids = voc.ids(split)
    paths = {i: voc.image_path(i) for i in ids}
    missing = [i for i in ids if not paths[i].exists()]
    odd = [i for i in ids if paths[i].exists() and not is_regular_file(paths[i])]
    for bad, what in ((missing, "that are missing"), (odd, "that are not regular files")):
        if bad:
            raise RcnnError(
                f"{voc.describe(split)} names {len(bad)} image(s) {what}, e.g. {paths[bad[0]]}"
            )
    if not ids:
        raise RcnnError(f"{voc.describe(split)} lists no image")
    return ids


def check_classes_present(truth: SplitTruth, classes: list[str], where: str) -> None:
    """Refuses a split in which none of ``classes`` has an object: its mean AP is undefined,
    and the model was most likely trained for another dataset."""
    if not any(t.positives for t in truth.classes.values()):
        raise RcnnError(
            f"no (non-difficult) object of {classes} in {where} (its annotations name "
            f"{sorted(truth.names) or 'no object'}): is the model for this dataset?"
        )


def run_test(cfg: VOCTestConfig) -> dict | None:
    """Detects on every image of the split (or the images still missing after a kill) and
    evaluates; returns the metrics, or with several ``cfg.variants`` the metrics of each
    (each variant in its own subfolder of ``cfg.out``, all from one forward pass).

    Under torchrun the images are shared out; each process sends its images' detections to
    rank 0, which alone writes (only its ``--out`` is used) and returns the metrics (the
    others return ``None``)."""
    variants = list(cfg.variants or [cfg.detector.variant])
    command = "rcnn ablate" if cfg.variants else "rcnn test"
    with run_stage(command, cfg.detector.inference.device, cfg) as stage:
        opened = stage.everywhere(lambda: _open_split(cfg, stage.device, variants), _source(cfg))
        voc, truth, loaded, detector = opened
        settings = {v.name: _settings(cfg, voc, loaded, v, detector) for v in variants}
        stage.agree(settings, "the model, heads and dataset")
        stage.agree(_annotations_digest(voc, truth.ids), f"the annotations of split {cfg.split}")
        out = Path(cfg.out)
        folders = {v.name: out / v.name if len(variants) > 1 else out for v in variants}

        def check(_out: Path) -> None:
            for name, folder in folders.items():
                claim_test_folder(folder, settings[name], cfg.overwrite)
                remove_temporaries(folder)

        stage.claim(out, check)
        results = _run_claimed(cfg, voc, truth, loaded, stage, detector, folders)
        if results is None:
            return None
        return results[variants[0].name] if len(variants) == 1 else results


def _source(cfg: VOCTestConfig) -> str:
    return f"--coco {cfg.coco}" if cfg.coco else f"--voc-root {cfg.voc_root}"


def _open_split(cfg: VOCTestConfig, device: str, variants):
    """The dataset, the split's ground truth, the model and the detector (on every rank)."""
    from rcnn.detection.detector import Detector
    from rcnn.modeling.checkpoint import load_model

    voc = cfg.dataset()
    ids = split_images(voc, cfg.split)
    loaded = load_model(cfg.model, cfg.classes)
    truth = load_ground_truth(voc, ids, loaded.classes)
    check_classes_present(truth, loaded.classes, voc.describe(cfg.split))
    if isinstance(voc, COCODataset):  # COCO's metrics need a category for each class
        voc.category_ids(cfg.split, loaded.classes)
    inference = replace(cfg.detector.inference, device=device)  # a process's own GPU
    detector = Detector(loaded, replace(cfg.detector, inference=inference), variants)
    return voc, truth, loaded, detector


def _annotations_digest(voc: Dataset, ids: list[str]) -> str:
    text = "".join(f"{i}:{voc.annotation_digest(i)}\n" for i in ids)
    return hashlib.sha256(text.encode()).hexdigest()


def _run_claimed(cfg, voc, truth: SplitTruth, loaded, stage, detector, folders) -> dict | None:
    """The detection of the images still to do, shared out, then the metrics (rank 0)."""
    from rcnn.runtime.distributed import broadcast

    world = stage.world
    inputs, finished, todo = {}, None, None
    if world.is_main:
        inputs = {i: input_digest(voc, i) for i in truth.ids}
        found = {name: _finished(f, _inputs_digest(inputs), loaded.classes, cfg.split, truth.ids,
                                 cfg.analyze)
                 for name, f in folders.items()}  # fmt: skip
        finished = found if all(found.values()) else None
    if broadcast(finished is not None):
        logger.info("%s: nothing changed since its run finished; its metrics stand", cfg.out)
        return finished
    done: dict[str, dict] = {}
    if world.is_main:
        done = {name: _scan(folder / "detections", truth.ids, inputs)
                for name, folder in folders.items()}  # fmt: skip
        todo = [i for i in truth.ids if not all(i in d for d in done.values())]
        if len(todo) < len(truth.ids):
            logger.info("%d of %d images already done in %s", len(truth.ids) - len(todo),
                        len(truth.ids), cfg.out)  # fmt: skip
    todo = broadcast(todo)
    expected = broadcast({i: inputs[i] for i in todo} if world.is_main else None)
    for image_id, result, found in detect_shared(detector, voc, todo, expected, stage,
                                                 cfg.progress):  # fmt: skip
        if not result.error:
            _check_size(image_id, result.size, truth.sizes[image_id])
        for name, folder in folders.items():
            dets = None if found is None else found[name]
            done[name][image_id] = save_image_detections(
                _npz_path(folder, image_id), result, dets, truth.objects[image_id], inputs[image_id]
            )
    if not world.is_main:
        return None
    results = {}
    for name, folder in folders.items():
        results[name] = _evaluate_folder(folder, cfg, voc, truth, loaded, done[name])
        record = {"inputs": _inputs_digest(inputs), "detections": _files_digest(folder, truth.ids),
                  "metrics": file_digest(folder / "metrics.json")}  # fmt: skip
        atomic_write_json(folder / DONE, record)
    return results


ROUND = 8  # images a process detects between two sends of its results to rank 0


def detect_shared(detector, voc: Dataset, ids: list[str], expected: dict, stage, progress):
    """``(image id, proposals result, {variant: Detections} or None)`` of every image of
    ``ids``, on rank 0 (nothing on the others). Under torchrun process ``r`` detects images
    ``r, r + G, ...``, checking first that it reads the bytes and annotations rank 0 read
    (``expected``), and sends its results to rank 0 every :data:`ROUND` images."""
    import itertools
    import math

    from rcnn.progress import progress_bar
    from rcnn.runtime.distributed import gather_to_main

    world = stage.world
    mine = ids[world.rank :: world.size]

    def check() -> None:
        for image_id in mine:
            if input_digest(voc, image_id) != expected[image_id]:
                raise RcnnError(
                    f"{voc.image_path(image_id)}: this process reads other bytes or another "
                    "annotation than rank 0; every process must see the same dataset"
                )

    if world.enabled:
        stage.everywhere(check, "the images")
    by_path = {str(voc.image_path(i)): i for i in mine}
    found = iter(detector.run_variants(list(by_path), progress=False))
    rounds = math.ceil(math.ceil(len(ids) / world.size) / ROUND)
    bar = progress_bar(total=len(ids), enabled=progress and world.is_main, desc="detect",
                       unit="img")  # fmt: skip
    with bar:
        for _ in range(rounds):
            part = stage.everywhere(
                lambda: [(by_path[r.path], r, d) for r, d in itertools.islice(found, ROUND)],
                "detection",
            )
            for sent in gather_to_main(part) or []:
                bar.update(len(sent))
                yield from sent


DONE = "done.json"  # written when a run's metrics are complete: the digest of its inputs


def input_digest(voc: Dataset, image_id: str) -> str:
    """What an image's detections were made from: its bytes and its annotation."""
    try:
        image = hashlib.sha256(read_regular_file(voc.image_path(image_id))).hexdigest()[:32]
    except OSError:
        image = "unreadable"
    return f"{image}:{voc.annotation_digest(image_id)}"


def _inputs_digest(inputs: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{i}:{d}\n" for i, d in inputs.items()).encode()).hexdigest()


def _files_digest(folder: Path, ids: list[str]) -> str | None:
    """The size and modification time of every per-image file (None if one is missing): a
    file changed since the run finished makes the run resume rather than stand."""
    parts = []
    for image_id in ids:
        try:
            found = _npz_path(folder, image_id).stat()
        except OSError:
            return None
        parts.append(f"{image_id}:{found.st_size}:{found.st_mtime_ns}\n")
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def _finished(
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
    if done.get("detections") is None or done["detections"] != _files_digest(folder, ids):
        return None
    if done.get("metrics") != file_digest(folder / "metrics.json"):  # replaced since
        return None
    metrics = nan_from_null(metrics)
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


def _npz_path(folder: Path, image_id: str) -> Path:
    return folder / "detections" / f"{image_id}.npz"


def _scan(folder: Path, ids: list[str], inputs: dict[str, str]) -> dict[str, dict]:
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


def _check_size(image_id: str, found: tuple[int, int], recorded: tuple[int, int]) -> None:
    if recorded != (0, 0) and tuple(found) != tuple(recorded):
        logger.warning(
            "%s: the annotation says %dx%d but the image is %dx%d (pixels as stored, EXIF "
            "orientation ignored): its boxes may not fit the image",
            image_id, *recorded, *found,
        )  # fmt: skip


def _evaluate_folder(folder: Path, cfg, voc, truth: SplitTruth, loaded, saved: dict) -> dict:
    detections, extra = gather_detections(folder / "detections", truth.ids, saved,
                                          len(loaded.classes))  # fmt: skip
    write_results(folder, cfg.split, loaded.classes, detections, truth.ids)
    groups = voc.groups(cfg.split)
    metrics = evaluate_detections(detections, truth, loaded.classes, cfg.analyze, groups)
    coco_truth = ground_truth(voc, cfg.split, truth.ids, loaded.classes)
    metrics["coco"] = coco_metrics(folder, coco_truth, loaded.classes, detections)
    metrics.update(extra)
    metrics.update(split=cfg.split, model=loaded.source, images=len(truth.ids))
    finish(folder, metrics)
    return metrics


def _settings(cfg: VOCTestConfig, voc: Dataset, loaded, variant, detector) -> dict:
    """What makes the detections what they are: a run with other settings starts afresh."""
    det = asdict(cfg.detector)
    keys = ("score_thresh", "keep_all", "nms", "max_per_image", "max_per_class", "mode",
            "max_side")  # fmt: skip
    heads = {}
    if variant.scorer == "svm":
        heads["svm"] = _head_digest(detector.svm_folder, "svm")
    if variant.bbox_reg:
        heads["bbox"] = _head_digest(detector.bbox_folder, "bbox")
    return {
        "model": loaded.digest,
        "device": detector.device.type,
        "amp": detector.inference.amp,  # precision changes scores: a resume must not mix them
        "classes": loaded.classes,
        **voc.settings(),
        "split": cfg.split,
        "variant": asdict(variant),
        **heads,
        **{k: det[k] for k in keys},
    }


def _head_digest(folder: Path, stem: str) -> str:
    """The digest of a head's arrays (``svm.npz`` or ``bbox.npz``, in a folder of any name)."""
    return hashlib.sha256(read_regular_file(Path(folder) / f"{stem}.npz")).hexdigest()


def claim_test_folder(out: Path, settings: dict, overwrite: bool) -> None:
    """Keeps the detections of an interrupted run with the same settings; refuses those of
    other settings. ``overwrite`` clears whatever is there."""
    path = out / "settings.json"
    if path.is_file():
        try:
            old = read_json(path, "`rcnn test` settings")
        except DamagedFileError as err:
            if not overwrite:
                raise DamagedFileError(f"{err}; pass --overwrite to start afresh") from None
            old = {}
        if old == settings and not overwrite:
            return
        if not overwrite:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            raise RcnnError(
                f"--out {out} holds detections made with other settings ({', '.join(changed)}); "
                "choose another --out or pass --overwrite"
            )
        shutil.rmtree(out / "detections", ignore_errors=True)
        (out / DONE).unlink(missing_ok=True)
    atomic_write_json(path, settings)


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


def write_results(
    out: Path, split: str, classes: list[str], detections: dict, ids: list[str]
) -> None:
    """The devkit's ``comp4_det_{split}_{class}.txt``: ``id score xmin ymin xmax ymax``, VOC's
    1-based inclusive pixels. Scores keep 9 significant digits, enough to tell apart any two
    float32 scores, so the files rank detections exactly as the metrics do."""
    for k, cls in enumerate(classes, start=1):
        images, scores, boxes = detections[k]
        voc = boxes_to_voc(boxes)
        lines = [
            f"{ids[i]} {score:.9g} {b[0]:.1f} {b[1]:.1f} {b[2]:.1f} {b[3]:.1f}\n"
            for i, score, b in zip(images.tolist(), scores.tolist(), voc.tolist(), strict=True)
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
            values = [float(v) for v in parts[1:]]
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


COCO_RESULTS = "coco_results.json"


def coco_metrics(out: Path, truth, classes: list[str], detections) -> dict:
    """Writes ``out/coco_results.json`` of ``detections`` against ``truth`` (a
    :class:`~rcnn.evaluation.coco_eval.COCOTruth`) and returns COCO's metrics of it."""
    from rcnn.evaluation.coco_eval import evaluate_results, results_of

    results = results_of(detections, truth)
    atomic_write_bytes(out / COCO_RESULTS, json.dumps(results).encode())
    return evaluate_results(results, truth, classes)


STRICT_IOU = 0.7  # a second, stricter overlap, where box regression shows


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
    voc: Dataset,
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
        names, detections, coco_truth = _read_coco_results(path, voc, split, classes)
    else:
        if out is not None and (Path(out) / "settings.json").is_file():
            raise ConfigError(
                f"--out {out} holds an `rcnn test` run, whose metrics the new ones would "
                "replace: choose another --out"
            )
        names, detections = _read_result_folder(path, voc, split, classes, out, competition)
        coco_truth = ground_truth(voc, split, voc.ids(split), names)
    ids = voc.ids(split)
    truth = load_ground_truth(voc, ids, names)
    check_classes_present(truth, names, voc.describe(split))
    target = output_dir(out) if out else path
    metrics = evaluate_detections(detections, truth, names, analyze, voc.groups(split))
    metrics["coco"] = coco_metrics(target, coco_truth, names, detections)
    metrics.update(split=split, dets=str(path), images=len(ids))
    finish(target, metrics)
    return metrics


def _read_result_folder(folder: Path, voc, split, classes, out, competition):
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
    index = {image_id: i for i, image_id in enumerate(voc.ids(split))}
    detections = {}
    for k, cls in enumerate(files, start=1):
        images, scores, boxes = read_results(files[cls])
        unknown = sorted(set(images) - set(index))
        if unknown:
            raise RcnnError(
                f"{files[cls]} names {len(unknown)} image(s) not in {voc.describe(split)}, "
                f"e.g. {unknown[0]}: results of another dataset or split?"
            )
        detections[k] = (np.array([index[i] for i in images], np.int64), scores, boxes)
    return list(files), detections


def _read_coco_results(path: Path, voc, split: str, classes: list[str] | None):
    """The classes, detections and COCO ground truth of a COCO results file: a list of ``{image_id,
    category_id, bbox: [x, y, w, h], score}``, ids of the dataset's file (of a VOC dataset:
    its image ids or names, and category ``k`` the ``k``-th of ``--classes``, as `rcnn test`
    writes)."""
    entries = read_results_file(path)
    if classes is None:
        if not isinstance(voc, COCODataset):
            raise ConfigError(
                f"--dets {path} on a VOC dataset needs --classes: category k is the k-th class"
            )
        # Every category, as COCO's own evaluation: one never detected counts in the means.
        classes = list(voc.split(split).categories.values())
        logger.info("--dets %s: evaluating every category of %s (--classes chooses)", path,
                    voc.describe(split))  # fmt: skip
    ids = voc.ids(split)
    truth = ground_truth(voc, split, ids, classes)
    names = {} if isinstance(voc, COCODataset) else {name: i for i, name in enumerate(ids)}
    detections = detections_of(entries, truth, classes, path, voc.describe(split), names)
    return list(classes), detections, truth


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
