"""``rcnn test`` and ``rcnn ablate``: the detector over every image of a split (VOC or COCO),
each image's results kept as soon as it is done (:mod:`rcnn.detection.image_results`), then
the devkit's and COCO's result files and metrics (:mod:`rcnn.evaluation`). Under torchrun the
images are shared out and rank 0 alone writes.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rcnn.data.annotations import check_split_name
from rcnn.data.coco import COCODataset
from rcnn.data.proposal_files import read_proposal_file
from rcnn.data.readers import Dataset, check_source, open_dataset
from rcnn.detection.config import DetectorConfig, Variant, eval_detector_config
from rcnn.detection.image_results import (
    DONE,
    files_digest,
    finished_metrics,
    gather_detections,
    input_digest,
    inputs_digest,
    npz_path,
    save_image_detections,
    scan_saved,
)
from rcnn.errors import RcnnError
from rcnn.evaluation.coco_eval import ground_truth
from rcnn.evaluation.detection_metrics import (
    SplitTruth,
    check_classes_present,
    evaluate_detections,
    finish,
    load_ground_truth,
)
from rcnn.evaluation.result_files import coco_metrics, write_results
from rcnn.files import (
    DamagedFileError,
    atomic_write_json,
    file_digest,
    is_regular_file,
    read_json,
    read_regular_file,
    remove_temporaries,
)
from rcnn.runtime.stage import run_stage

logger = logging.getLogger(__name__)


@dataclass
class TestConfig:
    """The settings of ``rcnn test`` (and ``rcnn ablate``) on a split of a VOC or COCO dataset."""

    __test__ = False  # a name pytest would otherwise collect

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


def split_images(dataset: Dataset, split: str) -> list[str]:
    """Every image id of the split; a listed image that is missing or is not a plain file (a
    FIFO, a device) is an error."""
    ids = dataset.ids(split)
    paths = {i: dataset.image_path(i) for i in ids}
    missing = [i for i in ids if not paths[i].exists()]
    odd = [i for i in ids if paths[i].exists() and not is_regular_file(paths[i])]
    for bad, what in ((missing, "that are missing"), (odd, "that are not regular files")):
        if bad:
            raise RcnnError(
                f"{dataset.describe(split)} names {len(bad)} image(s) {what}, e.g. {paths[bad[0]]}"
            )
    if not ids:
        raise RcnnError(f"{dataset.describe(split)} lists no image")
    return ids


def run_test(cfg: TestConfig) -> dict | None:
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
        dataset, truth, loaded, detector = opened
        settings = {v.name: _settings(cfg, dataset, loaded, v, detector) for v in variants}
        stage.agree(settings, "the model, heads and dataset")
        stage.agree(
            _annotations_digest(dataset, truth.ids), f"the annotations of split {cfg.split}"
        )
        out = Path(cfg.out)
        folders = {v.name: out / v.name if len(variants) > 1 else out for v in variants}

        def check(_out: Path) -> None:
            for name, folder in folders.items():
                claim_test_folder(folder, settings[name], cfg.overwrite)
                remove_temporaries(folder)

        stage.claim(out, check)
        results = _run_claimed(cfg, dataset, truth, loaded, stage, detector, folders)
        if results is None:
            return None
        return results[variants[0].name] if len(variants) == 1 else results


def _source(cfg: TestConfig) -> str:
    return f"--coco {cfg.coco}" if cfg.coco else f"--voc-root {cfg.voc_root}"


def _open_split(cfg: TestConfig, device: str, variants):
    """The dataset, the split's ground truth, the model and the detector (on every rank)."""
    from rcnn.detection.detector import Detector
    from rcnn.modeling.checkpoint import load_model

    dataset = cfg.dataset()
    ids = split_images(dataset, cfg.split)
    loaded = load_model(cfg.model, cfg.classes)
    truth = load_ground_truth(dataset, ids, loaded.classes)
    check_classes_present(truth, loaded.classes, dataset.describe(cfg.split))
    if isinstance(dataset, COCODataset):  # COCO's metrics need a category for each class
        dataset.category_ids(cfg.split, loaded.classes)
    if cfg.detector.proposals:  # every image of the split must be in it: said before any work
        read_proposal_file(cfg.detector.proposals).check_ids(ids, dataset.describe(cfg.split))
    inference = replace(cfg.detector.inference, device=device)  # a process's own GPU
    detector = Detector(loaded, replace(cfg.detector, inference=inference), variants)
    return dataset, truth, loaded, detector


def _annotations_digest(dataset: Dataset, ids: list[str]) -> str:
    text = "".join(f"{i}:{dataset.annotation_digest(i)}\n" for i in ids)
    return hashlib.sha256(text.encode()).hexdigest()


def _run_claimed(cfg, dataset, truth: SplitTruth, loaded, stage, detector, folders) -> dict | None:
    """The detection of the images still to do, shared out, then the metrics (rank 0)."""
    from rcnn.runtime.distributed import broadcast

    world = stage.world
    inputs, finished, todo = {}, None, None
    if world.is_main:
        inputs = {i: input_digest(dataset, i) for i in truth.ids}
        digest = inputs_digest(inputs)
        found = {name: finished_metrics(f, digest, loaded.classes, cfg.split, truth.ids,
                                        cfg.analyze)
                 for name, f in folders.items()}  # fmt: skip
        finished = found if all(found.values()) else None
    if broadcast(finished is not None):
        logger.info("%s: nothing changed since its run finished; its metrics stand", cfg.out)
        return finished
    done: dict[str, dict] = {}
    if world.is_main:
        done = {name: scan_saved(folder / "detections", truth.ids, inputs)
                for name, folder in folders.items()}  # fmt: skip
        todo = [i for i in truth.ids if not all(i in d for d in done.values())]
        if len(todo) < len(truth.ids):
            logger.info("%d of %d images already done in %s", len(truth.ids) - len(todo),
                        len(truth.ids), cfg.out)  # fmt: skip
    todo = broadcast(todo)
    expected = broadcast({i: inputs[i] for i in todo} if world.is_main else None)
    for image_id, result, found in detect_shared(detector, dataset, todo, expected, stage,
                                                 cfg.progress):  # fmt: skip
        if not result.error:
            _check_size(image_id, result.size, truth.sizes[image_id])
        for name, folder in folders.items():
            dets = None if found is None else found[name]
            done[name][image_id] = save_image_detections(
                npz_path(folder, image_id), result, dets, truth.objects[image_id], inputs[image_id]
            )
    if not world.is_main:
        return None
    results = {}
    for name, folder in folders.items():
        results[name] = _evaluate_folder(folder, cfg, dataset, truth, loaded, done[name])
        record = {"inputs": inputs_digest(inputs), "detections": files_digest(folder, truth.ids),
                  "metrics": file_digest(folder / "metrics.json")}  # fmt: skip
        atomic_write_json(folder / DONE, record)
    return results


ROUND = 8  # images a process detects between two sends of its results to rank 0


def detect_shared(detector, dataset: Dataset, ids: list[str], expected: dict, stage, progress):
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
            if input_digest(dataset, image_id) != expected[image_id]:
                raise RcnnError(
                    f"{dataset.image_path(image_id)}: this process reads other bytes or another "
                    "annotation than rank 0; every process must see the same dataset"
                )

    if world.enabled:
        stage.everywhere(check, "the images")
    by_path = {str(dataset.image_path(i)): i for i in mine}
    found = iter(detector.run_variants(list(by_path), progress=False, names=by_path))
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


def _check_size(image_id: str, found: tuple[int, int], recorded: tuple[int, int]) -> None:
    if recorded != (0, 0) and tuple(found) != tuple(recorded):
        logger.warning(
            "%s: the annotation says %dx%d but the image is %dx%d (pixels as stored, EXIF "
            "orientation ignored): its boxes may not fit the image",
            image_id, *recorded, *found,
        )  # fmt: skip


def _evaluate_folder(folder: Path, cfg, dataset, truth: SplitTruth, loaded, saved: dict) -> dict:
    detections, extra = gather_detections(folder / "detections", truth.ids, saved,
                                          len(loaded.classes))  # fmt: skip
    write_results(folder, cfg.split, loaded.classes, detections, truth.ids)
    groups = dataset.groups(cfg.split)
    metrics = evaluate_detections(detections, truth, loaded.classes, cfg.analyze, groups)
    coco_truth = ground_truth(dataset, cfg.split, truth.ids, loaded.classes)
    metrics["coco"] = coco_metrics(folder, coco_truth, loaded.classes, detections)
    metrics.update(extra)
    metrics.update(split=cfg.split, model=loaded.source, images=len(truth.ids))
    finish(folder, metrics)
    return metrics


def _settings(cfg: TestConfig, dataset: Dataset, loaded, variant, detector) -> dict:
    """What makes the detections what they are: a run with other settings starts afresh."""
    det = asdict(cfg.detector)
    keys = ("score_thresh", "keep_all", "nms", "max_per_image", "max_per_class", "mode",
            "max_side")  # fmt: skip
    heads = {}
    if variant.scorer == "svm":
        heads["svm"] = _head_digest(detector.svm_folder(variant), "svm")
    if variant.bbox_reg:
        heads["bbox"] = _head_digest(detector.bbox_folder, "bbox")
    return {
        "model": loaded.digest,
        "device": detector.device.type,
        "amp": detector.inference.amp,  # precision changes scores: a resume must not mix them
        "classes": loaded.classes,
        **dataset.settings(),
        "split": cfg.split,
        "variant": asdict(variant),
        **heads,
        **{k: det[k] for k in keys},
        **({"proposals": detector.proposals().cache_tag()} if cfg.detector.proposals else {}),
    }


def _head_digest(folder: Path, stem: str) -> str:
    """The digest of a head's arrays (``svm.npz`` or ``bbox.npz``, in a folder of any name)."""
    return hashlib.sha256(read_regular_file(Path(folder) / f"{stem}.npz")).hexdigest()


# What a run writes in its folder: with no settings.json beside them, another program's files.
OUTPUTS = ("metrics.json", "pr.png", "coco_results.json", DONE, "detections")


def _refuse_outputs_of_others(out: Path) -> None:
    """Refuses a folder holding files by the names of this command's outputs that no run of it
    wrote (no ``settings.json``): another detector's results, say, would be replaced."""
    found = [out / name for name in OUTPUTS if (out / name).exists()]
    found += sorted(out.glob("comp4_det_*.txt"))
    if found:
        raise RcnnError(
            f"--out {out} holds {found[0]}, which rcnn test did not write (no settings.json "
            "beside it); choose another --out or pass --overwrite to replace it"
        )


def claim_test_folder(out: Path, settings: dict, overwrite: bool) -> None:
    """Keeps the detections of an interrupted run with the same settings; refuses those of
    other settings. ``overwrite`` clears whatever is there."""
    path = out / "settings.json"
    if not path.is_file() and not overwrite:
        _refuse_outputs_of_others(out)
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
