"""``rcnn prepare``: VOC images -> Selective Search proposals -> labelled region stores."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from rcnn.data.config import PrepareConfig
from rcnn.data.datasets import Dataset, open_dataset
from rcnn.data.labels import label_regions, region_details
from rcnn.data.proposals import compute_proposals, default_cache_dir
from rcnn.data.regions import RegionSet, RegionTruth
from rcnn.data.voc import VOCAnnotation, VOCFormatError
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


def _load_annotations(voc: Dataset, ids: list[str], skipped: list[dict]):
    """Each image's annotation; bad ones go to ``skipped``."""
    annotations = {}
    for image_id in ids:
        path = voc.annotation_path(image_id)
        try:
            ann = voc.annotation(image_id)
        except VOCFormatError as err:
            skipped.append({"image": image_id, "reason": str(err)})
            continue
        if not ann.objects:
            skipped.append({"image": image_id, "reason": f"{path}: {image_id} has no object"})
            continue
        annotations[image_id] = ann
    return annotations


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


def split_proposals(cfg: PrepareConfig, paths: list[str], world: World = SINGLE) -> list | None:
    """The proposals of every image of ``paths``, in order. Under torchrun each process
    searches every ``world.size``-th image with its own worker pool (of this machine's cores
    shared among its processes) and rank 0 gets them all; the other ranks get ``None``."""
    cache_dir = cfg.cache_dir if cfg.cache_dir is not None else default_cache_dir()
    workers = cfg.workers or max(1, (os.cpu_count() or 1) // local_processes())
    mine = paths[world.rank :: world.size]
    progress = cfg.progress and world.is_main
    found = everywhere(
        world,
        lambda: compute_proposals(mine, cfg.proposals, cache_dir, workers, progress),
        "Selective Search",
    )
    if not world.enabled:
        return found
    parts = gather_to_main(found)
    if parts is None:
        return None
    results: list = [None] * len(paths)
    for rank, part in enumerate(parts):
        results[rank :: world.size] = part
    return results


def prepare_split(
    cfg: PrepareConfig, voc: Dataset, split: str, world: World = SINGLE
) -> tuple[RegionSet, dict] | None:
    """Builds one split's region set and its summary (on rank 0; ``None`` on the others)."""
    start = time.perf_counter()
    ids = voc.select_images(split, cfg.classes)
    skipped: list[dict] = []
    annotations = _load_annotations(voc, ids, skipped)
    kept_ids = list(annotations)
    paths = [str(voc.image_path(i)) for i in kept_ids]
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    agree(world, digest, f"rcnn prepare: split {split}'s images", FILES)
    results = split_proposals(cfg, paths, world)
    made: list = []
    # Rank 0 labels the split; an error there (no usable image) reaches every rank.
    rank_zero_first(
        world,
        lambda: made.append(label_split(cfg, voc, split, kept_ids, annotations, results, skipped)),
    )
    if made:
        regions, summary = made[0]
        summary["seconds"] = round(time.perf_counter() - start, 3)
        return regions, summary
    return None


def label_split(cfg, voc, split, kept_ids, annotations, results, skipped):
    """The region set and summary of a split from its images' proposals."""
    image_paths, sizes, parts, gt_parts = [], [], [], []
    num_proposals = cached = gt_seen = 0
    num_classes = len(cfg.classes)
    for image_id, result in zip(kept_ids, results, strict=True):
        if result.error or len(result.boxes) == 0:
            skipped.append(
                {
                    "image": image_id,
                    "reason": result.error or f"{result.path}: Selective Search found no proposals",
                }
            )
            continue
        num_proposals += len(result.boxes)
        cached += result.cached
        gt_boxes, gt_labels, gt_difficult = _ground_truth(
            annotations[image_id], cfg.classes, cfg.labels.keep_difficult, result.size
        )
        boxes, labels, ious = label_regions(result.boxes, gt_boxes, gt_labels, cfg.labels)
        gt_index, class_ious, is_gt = region_details(boxes, gt_boxes, gt_labels, num_classes)
        image = len(image_paths)
        gt_index = np.where(gt_index >= 0, gt_index + gt_seen, -1)  # rows of the split's arrays
        parts.append(
            (
                np.full(len(labels), image, np.int32),
                boxes,
                labels,
                ious,
                gt_index,
                class_ious,
                is_gt,
            )
        )
        gt_parts.append((gt_boxes, gt_labels, np.full(len(gt_boxes), image), gt_difficult))
        gt_seen += len(gt_boxes)
        image_paths.append(str(Path(result.path).resolve()))
        sizes.append(result.size)

    for bad in skipped:
        logger.warning("skipped image %s: %s", bad["image"], bad["reason"])
    if skipped and cfg.strict:
        raise BadImageError(
            f"--strict: {len(skipped)} bad image(s) in split '{split}', first: "
            f"{skipped[0]['reason']}"
        )
    if not image_paths:
        first = f"; first: {skipped[0]['reason']}" if skipped else ""
        raise VOCFormatError(f"split '{split}' ({voc.describe(split)}): no usable image{first}")

    index, boxes, labels, ious, gt_index, class_ious, is_gt = (
        np.concatenate(a) for a in zip(*parts, strict=True)
    )
    truth = RegionTruth(
        *(np.concatenate(a) for a in zip(*gt_parts, strict=True)), gt_index, class_ious, is_gt
    )
    info = {
        "split": split,
        **voc.settings(),
        "labels": cfg.labels.to_dict(),
        "proposals": cfg.proposals.cache_tag(),
    }
    regions = RegionSet(image_paths, index, boxes, labels, ious, cfg.classes, sizes, info, truth)
    if regions.num_positive == 0:
        logger.warning(
            "split '%s': no object regions; check --classes %s against the object names of %s",
            split,
            " ".join(cfg.classes),
            voc.describe(split),
        )
    summary = {
        "images": len(image_paths),
        "skipped": skipped,
        "proposals": num_proposals,
        "from_cache": cached,
        "regions": len(regions),
        "positives": regions.num_positive,
        "negatives": regions.num_negative,
        "positives_per_class": {
            c: int(np.count_nonzero(labels == k + 1)) for k, c in enumerate(cfg.classes)
        },
    }
    return regions, summary


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
        voc = stage.everywhere(lambda: _open(cfg), _source(cfg))
        staging: list[Path] = []

        def check(out: Path) -> None:
            for stale in out.glob(".prepare-*"):  # left by a killed run: we hold the lock
                _restore(stale / ".previous", out)
                shutil.rmtree(stale, ignore_errors=True)
            staging.append(Path(tempfile.mkdtemp(prefix=".prepare-", dir=out)))
            stage.stack.callback(shutil.rmtree, staging[0], ignore_errors=True)

        stage.claim(cfg.out, check)
        # Every rank reads the split files now, so that one that cannot is named.
        stage.everywhere(lambda: [voc.ids(split) for _, split in cfg.stores], _source(cfg))
        built, summaries, summary = {}, {}, {}
        for store, split in cfg.stores:
            made = prepare_split(cfg, voc, split, world)
            if made is not None:  # rank 0
                built[store], summaries[store] = made

        def publish() -> None:
            generation = generation_of(built)
            for split, regions in built.items():
                regions.info["generation"] = generation
                regions.save(staging[0] / split)
            summary.update(
                **voc.settings(),
                classes=cfg.classes,
                labels=cfg.labels.to_dict(),
                proposals={"mode": cfg.proposals.mode, "max_side": cfg.proposals.max_side},
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
