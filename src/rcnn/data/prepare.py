"""``rcnn prepare``: VOC images -> Selective Search proposals -> labelled region stores."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcnn.data.annotations import DatasetError, VOCAnnotation
from rcnn.data.config import PrepareConfig
from rcnn.data.labels import label_regions, region_details
from rcnn.data.proposal_files import proposal_source, read_proposal_file
from rcnn.data.proposals import default_cache_dir
from rcnn.data.readers import Dataset, open_dataset
from rcnn.data.regions import RegionSet, RegionTruth
from rcnn.errors import RcnnError
from rcnn.files import atomic_write_json
from rcnn.ops.boxes import clip_boxes, nonempty
from rcnn.runtime.distributed import (
    FILES,
    SINGLE,
    World,
    agree,
    everywhere,
    gather_to_main,
    local_processes,
    rank_zero_first,
)
from rcnn.runtime.stage import run_stage

logger = logging.getLogger(__name__)


class BadImageError(RcnnError):
    """An image could not be used; raised instead of skipping it under ``--strict``."""


def split_images(dataset: Dataset, split: str, cfg: PrepareConfig) -> list[str]:
    """The ids of the images to label: every image of the split with ``background_images``
    (the paper preset), else those that show a chosen class (the seed preset)."""
    chosen = dataset.select_images(split, cfg.classes)  # also checks --classes
    return dataset.ids(split) if cfg.labels.background_images else chosen


def _load_annotations(
    dataset: Dataset, ids: list[str], keep_empty: bool = False
) -> tuple[dict, list[dict]]:
    """Each image's annotation, and the images left out (unreadable, or without objects
    unless ``keep_empty``)."""
    annotations, skipped = {}, []
    for image_id in ids:
        path = dataset.annotation_path(image_id)
        try:
            ann = dataset.annotation(image_id)
        except DatasetError as err:
            skipped.append({"image": image_id, "reason": str(err)})
            continue
        if not ann.objects and not keep_empty:
            skipped.append({"image": image_id, "reason": f"{path}: {image_id} has no object"})
            continue
        annotations[image_id] = ann
    return annotations, skipped


def _ground_truth(ann: VOCAnnotation, classes: list[str], keep_difficult: bool, size):
    objects = ann.select(classes, keep_difficult)
    boxes = np.array([o.box for o in objects], dtype=np.int32).reshape(-1, 4)
    labels = np.array([classes.index(o.name) + 1 for o in objects], dtype=np.int16)
    difficult = np.array([o.difficult for o in objects], dtype=bool)
    width, height = size
    if (ann.width, ann.height) not in ((0, 0), (width, height)):  # 0x0: no size recorded
        logger.warning(
            "%s: the annotation says %dx%d but the image is %dx%d; boxes clipped to the image",
            ann.image_id,
            ann.width,
            ann.height,
            width,
            height,
        )
    boxes = clip_boxes(boxes, width, height)
    keep = nonempty(boxes)
    return boxes[keep], labels[keep], difficult[keep]


def split_proposals(
    cfg: PrepareConfig, paths: list[str], ids: list[str], world: World = SINGLE
) -> list | None:
    """The proposals of every image of ``paths`` (ids ``ids``), in order, searched or read from
    ``--proposals``. Under torchrun each process takes every ``world.size``-th image, searching
    with its own worker pool (of this machine's cores shared among its processes), and rank 0
    gets them all; the other ranks get ``None``."""
    cache_dir = cfg.cache_dir if cfg.cache_dir is not None else default_cache_dir()
    workers = cfg.workers or max(1, (os.cpu_count() or 1) // local_processes())
    mine, names = paths[world.rank :: world.size], ids[world.rank :: world.size]
    progress = cfg.progress and world.is_main

    def compute():
        with proposal_source(cfg.proposals, cache_dir, workers) as source:
            return source.compute(mine, progress, names)

    found = everywhere(world, compute, "the proposals")
    if not world.enabled:
        return found
    parts = gather_to_main(found)
    if parts is None:
        return None
    results: list = [None] * len(paths)
    for rank, part in enumerate(parts):
        results[rank :: world.size] = part
    return results


@dataclass
class SplitImages:
    """A split's images to label: their annotations and proposals (in the same order), and the
    images already left out."""

    split: str
    annotations: dict[str, VOCAnnotation]
    proposals: list  # a ProposalResult an image
    skipped: list[dict]


def prepare_split(
    cfg: PrepareConfig, dataset: Dataset, split: str, world: World = SINGLE
) -> tuple[RegionSet, dict] | None:
    """Builds one split's region set and its summary (on rank 0; ``None`` on the others)."""
    start = time.perf_counter()
    annotations, skipped = _load_annotations(
        dataset, split_images(dataset, split, cfg), cfg.labels.background_images
    )
    paths = [str(dataset.image_path(i)) for i in annotations]
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    agree(world, digest, f"rcnn prepare: split {split}'s images", FILES)
    if cfg.proposals.file:  # every image of the split must be in it: said before any work
        read_proposal_file(cfg.proposals.file).check_ids(list(annotations), f"split '{split}'")
    proposals = split_proposals(cfg, paths, list(annotations), world)
    made: list = []
    images = SplitImages(split, annotations, proposals, skipped)
    # Rank 0 labels the split; an error there (no usable image) reaches every rank.
    rank_zero_first(world, lambda: made.append(label_split(cfg, dataset, images)))
    if made:
        regions, summary = made[0]
        summary["seconds"] = round(time.perf_counter() - start, 3)
        return regions, summary
    return None


@dataclass
class ImageRegions:
    """One image's labelled regions and its ground truth (``gt_index`` counts its own boxes)."""

    path: str
    size: tuple[int, int]
    boxes: np.ndarray
    labels: np.ndarray
    ious: np.ndarray
    gt_index: np.ndarray
    class_ious: np.ndarray
    is_gt: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_difficult: np.ndarray
    proposals: int
    cached: bool


def label_image(cfg: PrepareConfig, annotation: VOCAnnotation, result) -> ImageRegions:
    """The regions of one image's proposals, labelled against its ground truth."""
    gt_boxes, gt_labels, gt_difficult = _ground_truth(
        annotation, cfg.classes, cfg.labels.keep_difficult, result.size
    )
    boxes, labels, ious = label_regions(result.boxes, gt_boxes, gt_labels, cfg.labels)
    gt_index, class_ious, is_gt = region_details(boxes, gt_boxes, gt_labels, len(cfg.classes))
    return ImageRegions(str(Path(result.path).resolve()), result.size, boxes, labels, ious,
                        gt_index, class_ious, is_gt, gt_boxes, gt_labels, gt_difficult,
                        len(result.boxes), result.cached)  # fmt: skip


def label_split(cfg: PrepareConfig, dataset: Dataset, images: SplitImages):
    """The region set and summary of a split from its images' proposals."""
    labelled, skipped = [], list(images.skipped)
    for (image_id, ann), result in zip(images.annotations.items(), images.proposals, strict=True):
        if result.error or len(result.boxes) == 0:
            none = (f"--proposals {cfg.proposals.file} holds no box for it" if cfg.proposals.file
                    else "Selective Search found no proposals")  # fmt: skip
            reason = result.error or f"{result.path}: {none}"
            skipped.append({"image": image_id, "reason": reason})
        else:
            labelled.append(label_image(cfg, ann, result))
    for bad in skipped:
        logger.warning("skipped image %s: %s", bad["image"], bad["reason"])
    split = images.split
    if skipped and cfg.strict:
        raise BadImageError(
            f"--strict: {len(skipped)} bad image(s) in split '{split}', first: "
            f"{skipped[0]['reason']}"
        )
    if not labelled:
        first = f"; first: {skipped[0]['reason']}" if skipped else ""
        raise DatasetError(f"split '{split}' ({dataset.describe(split)}): no usable image{first}")
    info = {"split": split, **dataset.settings(), "labels": cfg.labels.to_dict(),
            "proposals": cfg.proposals.cache_tag()}  # fmt: skip
    regions = region_set(labelled, cfg.classes, info)
    if regions.num_positive == 0:
        logger.warning("split '%s': no object regions; check --classes %s against the object "
                       "names of %s", split, " ".join(cfg.classes),
                       dataset.describe(split))  # fmt: skip
    per_class = {
        c: int(np.count_nonzero(regions.labels == k + 1)) for k, c in enumerate(cfg.classes)
    }
    absent = [c for c, n in per_class.items() if n == 0]
    if regions.num_positive and absent:  # said now, not after training on the others
        logger.warning("split '%s': no object region of %s; check --classes against the "
                       "object names of %s", split, ", ".join(absent),
                       dataset.describe(split))  # fmt: skip
    background = sum(len(image.gt_boxes) == 0 for image in labelled)
    summary = {
        "images": len(labelled),
        "with_objects": len(labelled) - background,  # a (kept) box of a chosen class
        "background_only": background,  # every region a negative (the paper preset)
        "skipped": skipped,
        "proposals": sum(image.proposals for image in labelled),
        "from_cache": sum(image.cached for image in labelled),
        "regions": len(regions),
        "positives": regions.num_positive,
        "negatives": regions.num_negative,
        "positives_per_class": per_class,
    }
    return regions, summary


def region_set(labelled: list[ImageRegions], classes: list[str], info: dict) -> RegionSet:
    """The images' regions as one store: image ``i`` of the arrays is ``labelled[i]``, and
    ``gt_index`` counts the rows of the split's ground-truth arrays."""

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(image, name) for image in labelled])

    firsts = np.cumsum([0] + [len(image.gt_boxes) for image in labelled])
    gt_index = np.concatenate([
        np.where(image.gt_index >= 0, image.gt_index + first, -1)
        for image, first in zip(labelled, firsts, strict=False)
    ])  # fmt: skip
    index = np.concatenate([np.full(len(im.boxes), i, np.int32) for i, im in enumerate(labelled)])
    gt_image = np.concatenate([np.full(len(im.gt_boxes), i) for i, im in enumerate(labelled)])
    truth = RegionTruth(joined("gt_boxes"), joined("gt_labels"), gt_image, joined("gt_difficult"),
                        gt_index, joined("class_ious"), joined("is_gt"))  # fmt: skip
    return RegionSet([image.path for image in labelled], index, joined("boxes"), joined("labels"),
                     joined("ious"), classes, [image.size for image in labelled], info,
                     truth)  # fmt: skip


def run_prepare(cfg: PrepareConfig) -> dict | None:
    """Prepares every split and replaces ``OUT/{split}/`` and ``OUT/summary.json`` together;
    returns the summary (``None`` on torchrun's other ranks).

    Every split is built in a staging folder inside ``OUT`` first; the previous stores are
    replaced only once all splits succeeded, so a failed or interrupted run leaves them as
    they were. A lock file keeps a second ``prepare`` off the same ``OUT`` meanwhile. The
    stores and the summary share one ``generation`` id, which training checks.

    Under torchrun the images are shared out among the processes for Selective Search
    (:func:`split_proposals`); rank 0 alone labels, writes and publishes, and the stores are
    those of one process.
    """
    with run_stage("rcnn prepare", "cpu", cfg) as stage:
        world = stage.world
        dataset = stage.everywhere(lambda: _open(cfg), _source(cfg))
        staging: list[Path] = []

        def check(out: Path) -> None:
            for stale in out.glob(".prepare-*"):  # left by a killed run: we hold the lock
                _restore(stale / ".previous", out)
                shutil.rmtree(stale, ignore_errors=True)
            staging.append(Path(tempfile.mkdtemp(prefix=".prepare-", dir=out)))
            stage.stack.callback(shutil.rmtree, staging[0], ignore_errors=True)

        stage.claim(cfg.out, check)
        # Every rank reads the split files now, so that one that cannot is named.
        stage.everywhere(lambda: [dataset.ids(split) for _, split in cfg.stores], _source(cfg))
        built, summaries, summary = {}, {}, {}
        for store, split in cfg.stores:
            made = prepare_split(cfg, dataset, split, world)
            if made is not None:  # rank 0
                built[store], summaries[store] = made

        def publish() -> None:
            generation = generation_of(built)
            for split, regions in built.items():
                regions.info["generation"] = generation
                regions.save(staging[0] / split)
            summary.update(
                **dataset.settings(),
                classes=cfg.classes,
                labels=cfg.labels.to_dict(),
                proposals={
                    "mode": cfg.proposals.mode,
                    "max_side": cfg.proposals.max_side,
                    "tag": cfg.proposals.cache_tag(),
                },
                generation=generation,
                splits=summaries,
            )
            atomic_write_json(staging[0] / "summary.json", summary)
            _publish(staging[0], Path(cfg.out), list(built))

        rank_zero_first(world, publish)
        return summary if world.is_main else None


def _open(cfg: PrepareConfig):
    dataset = open_dataset(cfg.voc_root, cfg.coco, cfg.images)
    if cfg.coco:
        dataset.check_splits([split for _, split in cfg.stores])
    return dataset


def _source(cfg: PrepareConfig) -> str:
    return f"--coco {cfg.coco}" if cfg.coco else f"--voc-root {cfg.voc_root}"


def generation_of(splits: dict[str, RegionSet]) -> str:
    """An id of one ``prepare`` run's output: a digest of every split's regions and settings,
    so the same inputs give the same id (and byte-identical stores)."""
    digest = hashlib.sha256()
    for split, regions in splits.items():
        header = [split, regions.classes, regions.image_paths, regions.info]
        digest.update(json.dumps(header, sort_keys=True).encode())
        for array in (regions.image_index, regions.boxes, regions.labels, regions.ious):
            digest.update(array.tobytes())
        if regions.truth is not None:
            for array in regions.truth.arrays().values():
                digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _publish(staging: Path, out: Path, splits: list[str]) -> None:
    """Moves the staged stores and summary into ``out``, the previous ones out of the way.

    Each move is a rename inside one folder. If one fails, the previous stores are moved
    back; if the process dies in between, the next ``prepare`` moves them back first
    (:func:`_restore`), and stores left half-swapped carry different generations, which
    training refuses.
    """
    old = staging / ".previous"
    old.mkdir()
    try:
        for split in splits:
            if (out / split).exists():
                os.replace(out / split, old / split)
            os.replace(staging / split, out / split)
        os.replace(staging / "summary.json", out / "summary.json")
    except BaseException:
        for split in splits:
            if (old / split).exists():
                shutil.rmtree(out / split, ignore_errors=True)
        _restore(old, out)
        raise


def _restore(old: Path, out: Path) -> None:
    """Puts back previous stores that a publish had moved aside and not replaced."""
    if not old.is_dir():
        return
    for store in old.iterdir():
        if not (out / store.name).exists():
            os.replace(store, out / store.name)
            logger.warning("restored the previous %s from an interrupted run", out / store.name)
