"""The R-CNN detector: Selective Search proposals, every proposal scored by the fine-tuned
network, then per-class non-maximum suppression.

Proposals come from the same code and cache as ``rcnn prepare`` (a worker pool searches the
next images while the network scores the current ones). Regions are warped by the training
paths (the GPU-resident ``roi_align`` path on CUDA, OpenCV threads on the CPU) with the run's
input size, context padding and normalization, in large batches. Each class then keeps the
boxes scoring at least ``score_thresh``, suppresses overlaps above ``nms`` IoU with
``torchvision.ops.batched_nms``, and the image keeps its ``max_per_image`` best.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterable, Iterator, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import batched_nms

from rcnn.data.config import ProposalConfig
from rcnn.data.feeders import image_batches, make_feeder
from rcnn.data.proposal_files import proposal_source
from rcnn.data.proposals import ProposalResult
from rcnn.data.regions import RegionSet
from rcnn.data.warps import ImageStore
from rcnn.detection.config import DetectorConfig, Variant
from rcnn.detection.detections import Detections
from rcnn.errors import RcnnError
from rcnn.heads.bbox_regression import BBoxRegressor
from rcnn.heads.config import run_part
from rcnn.heads.svm import SVMModel
from rcnn.modeling.checkpoint import LoadedModel
from rcnn.modeling.config import LAYERS
from rcnn.modeling.features import feature_dims, forward_features
from rcnn.progress import progress_bar
from rcnn.runtime.allocator import release_freed_memory
from rcnn.runtime.device import autocast

logger = logging.getLogger(__name__)


class Detector:
    """Scores proposals with a fine-tuned classifier (or the SVMs on its fc7 features), moves
    them with the box regressors when asked, and turns the scores into detections.

    Args:
        loaded: the fine-tuned classifier.
        cfg: settings; ``cfg.scorer`` and ``cfg.bbox_reg`` give the default variant.
        variants: several ways to turn one forward pass into detections (the ablation).
    """

    def __init__(self, loaded: LoadedModel, cfg: DetectorConfig, variants=None):
        self.cfg, self.classes, self.source = cfg, loaded.classes, loaded.source
        self.variants = list(variants or [cfg.variant])
        self.device, self.inference, self.model = loaded.for_inference(cfg.inference)
        self.warp = loaded.spec.warp()
        dims = feature_dims(self.model)
        self.bbox = None
        self.svms: dict[Path, SVMModel] = {}  # a variant's SVMs by folder
        for folder in dict.fromkeys(self.svm_folder(v) for v in self.variants if v.scorer == "svm"):
            svm = SVMModel.load(folder)
            if svm.layer not in dims:
                raise RcnnError(f"{folder}: SVMs of a layer {svm.layer!r} not among {LAYERS}")
            self.svms[folder] = check_head(svm, folder, loaded, dims[svm.layer])
        self.bbox_folder = Path(cfg.bbox_reg or run_part(loaded.source, "bbox"))
        if any(v.bbox_reg for v in self.variants):
            bbox = BBoxRegressor.load(self.bbox_folder)
            self.bbox = check_head(bbox, self.bbox_folder, loaded, dims["pool5"])
        needed = {svm.layer for svm in self.svms.values()} | ({"pool5"} if self.bbox else set())
        self.layers = [name for name in LAYERS if name in needed]

    def svm_folder(self, variant: Variant) -> Path:
        """The folder of a variant's SVMs: its own, the detector's, or the run's ``svm/``."""
        return Path(variant.svm or self.cfg.svm or run_part(self.source, "svm"))

    def forward(self, paths: list[str], boxes: list[np.ndarray], sizes: list) -> list[dict]:
        """Per image: softmax probabilities ``probs [K_i, K + 1]`` of its boxes ``[K_i, 4]`` and
        the features the scorers need (``fc7``, ``pool5``), in one pass over all of them."""
        return list(self.forward_each(paths, boxes, sizes))

    def forward_each(
        self, paths: list[str], boxes: list[np.ndarray], sizes: list
    ) -> Iterator[dict]:
        """:meth:`forward`'s dicts one image at a time, each as soon as its last batch is
        scored: only one image's features are held (pool5 and fc7 of 2,000 proposals are about
        100 MB in float32), however many images are scored together."""
        if not paths:
            return
        counts = [len(b) for b in boxes]
        index = np.repeat(np.arange(len(paths)), counts)
        flat = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int32)
        zeros = np.zeros(len(flat))
        regions = RegionSet(paths, index, flat, zeros, zeros, self.classes, list(sizes))
        threads = self.inference.threads
        store = ImageStore.of(regions, threads)
        order = image_batches(counts, self.inference.batch)  # no batch holds two images
        feeder = make_feeder(regions, order, self.warp, self.device, workers=threads, store=store)
        names = ["probs", *self.layers]
        width = {"probs": len(self.classes) + 1}
        parts: dict[str, list] = {name: [] for name in names}
        image = filled = 0

        def finished():
            nonlocal parts, image, filled
            while image < len(counts) and filled == counts[image]:
                yield {
                    name: torch.cat(p).float().cpu().numpy()
                    if p
                    else np.zeros((0, width.get(name, 0)), np.float32)
                    for name, p in parts.items()
                }
                parts, image, filled = {name: [] for name in names}, image + 1, 0

        yield from finished()  # images without a region
        amp = functools.partial(autocast, self.device, self.inference.amp)
        for probs, features in forward_features(self.model, feeder, self.layers, amp):
            parts["probs"].append(probs)
            for name in self.layers:
                parts[name].append(features[name])
            filled += len(probs)
            yield from finished()

    def score(self, paths: list[str], boxes: list[np.ndarray], sizes: list) -> list[np.ndarray]:
        """Softmax probabilities ``[K_i, K + 1]`` of each image's boxes ``[K_i, 4]``."""
        return [out["probs"] for out in self.forward(paths, boxes, sizes)]

    def postprocess(self, boxes: np.ndarray, out: dict, size, variant=None) -> Detections:
        """Scores, box regression, threshold, per-class NMS and caps for one image."""
        variant = variant or self.variants[0]
        boxes, scores = self.scored(boxes, out, size, variant)
        return select_detections(
            boxes,
            scores,
            self.cfg.threshold(variant.scorer),
            self.cfg.nms,
            self.cfg.max_per_class,
            self.cfg.max_per_image,
        )

    def scored(self, boxes: np.ndarray, out: dict, size, variant: Variant):
        """A variant's scores ``[N, K]`` of one image's boxes ``[N, 4]``, and the boxes they
        are for: ``[N, K, 4]`` moved by each class's regressor with box regression, else
        the boxes themselves."""
        if variant.scorer == "svm":
            svm = self.svms[self.svm_folder(variant)]
            scores = svm.scores(out[svm.layer])
        else:
            scores = out["probs"][:, 1:]
        if variant.bbox_reg:
            boxes = self.bbox.apply(boxes, out["pool5"], size)
        return boxes, scores

    def run(
        self, paths: Iterable[str], progress: bool = True
    ) -> Iterator[tuple[ProposalResult, Detections | None]]:
        """Detections of every image by the first variant, in order; ``None`` with
        ``result.error`` for an image that could not be read."""
        first = self.variants[0].name
        for result, found in self.run_variants(paths, progress):
            yield result, None if found is None else found[first]

    def proposals(self) -> ProposalConfig:
        return ProposalConfig(
            self.cfg.mode, self.cfg.max_side, self.cfg.proposals, self.cfg.max_proposals
        )

    def run_variants(
        self, paths: Iterable[str], progress: bool = True, names: dict | None = None
    ) -> Iterator[tuple[ProposalResult, dict | None]]:
        """``{variant name: Detections}`` of every image, in order. Proposals for the next
        chunk of images are computed while the current one is scored, by one pool for the
        whole call; ``paths`` may be any iterable, read a chunk ahead (a generator's next
        chunk is taken on another thread). From ``--proposals``, an image is found by
        ``names[path]`` (its file name without extension by default)."""
        pool = proposal_source(self.proposals(), self.cfg.cache_dir, self.cfg.workers)
        # A chunk smaller than the pool would leave Selective Search processes idle: with 8
        # images a chunk and 16 processes, searching was the bottleneck on a 16-core machine.
        size = self.cfg.chunk or max(8, 2 * pool.workers)
        remaining = iter(paths)

        def compute_next() -> list[ProposalResult]:
            group = list(itertools.islice(remaining, size))
            return pool.compute(group, False, [names[p] for p in group] if names else None)

        total = len(paths) if isinstance(paths, Sized) else None
        bar = progress_bar(total=total, enabled=progress, desc="detect", unit="img")
        # Left in reverse order: the executor waits for its search before the pool stops.
        with bar, pool, ThreadPoolExecutor(1) as ahead:
            results = ahead.submit(compute_next).result()
            while results:
                pending = ahead.submit(compute_next)
                yield from self._detect(results)
                release_freed_memory()
                bar.update(len(results))
                results = pending.result()

    def _detect(self, results: list[ProposalResult]):
        good = [r for r in results if not r.error and r.boxes is not None and len(r.boxes)]
        outs = self.forward_each(
            [r.path for r in good], [r.boxes for r in good], [r.size for r in good]
        )
        alone = False
        for r in results:
            if r.error:
                yield r, None
                continue
            if r.boxes is None or not len(r.boxes):  # no proposal at all
                yield r, {v.name: Detections.empty() for v in self.variants}
                continue
            out = None
            if not alone:
                try:
                    out = next(outs)
                except (OSError, RcnnError):
                    # An image was read again for the network and had changed since its
                    # proposals (gone, replaced, resized): the rest are scored one by one, so
                    # that only that image is lost. An image's scores do not depend on the
                    # images beside it.
                    alone = True
            if alone:
                out = self._forward_alone(r)
            if isinstance(out, str):  # why it failed
                yield replace(r, error=out), None
            else:
                yield r, {v.name: self.postprocess(r.boxes, out, r.size, v) for v in self.variants}
            del out  # its features go before the next image's arrive
        if not alone:
            for _ in outs:  # nothing is left: lets the feeder finish its pass
                raise AssertionError("an image's features were not used")

    def _forward_alone(self, r: ProposalResult) -> dict | str:
        """:meth:`forward` of one image, or why it failed."""
        try:
            return self.forward([r.path], [r.boxes], [r.size])[0]
        except (OSError, RcnnError) as err:
            return str(err)


def check_head(head, folder, loaded: LoadedModel, dim: int):
    """Refuses SVMs or box regressors made for other classes or on another network's features
    (compared by the digest of its weights: a network of the same architecture is not the
    same network)."""
    if [c.lower() for c in head.classes] != [c.lower() for c in loaded.classes]:
        raise RcnnError(
            f"{folder} was trained for classes {head.classes}, the model for {loaded.classes}"
        )
    if head.weights.shape[-2 if head.weights.ndim == 3 else -1] != dim:
        raise RcnnError(
            f"{folder} was trained on {head.weights.shape[1]}-d features, but {loaded.source} "
            f"gives {dim}-d ones: it belongs to another backbone; train it again"
        )
    trained_on = head.info.get("model")
    if not isinstance(trained_on, dict) or trained_on.get("digest") != loaded.digest:
        made = trained_on.get("path") if isinstance(trained_on, dict) else "an unknown model"
        raise RcnnError(
            f"{folder} was trained on the features of another model ({made}), not of "
            f"{loaded.source}: train it again for this model"
        )
    return head


def select_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    score_thresh: float,
    nms: float,
    max_per_class: int = 0,
    max_per_image: int = 0,
) -> Detections:
    """Per-class thresholding and non-maximum suppression.

    Args:
        boxes: ``[N, 4]`` proposals (or ``[N, K, 4]``: one box per class, after box regression).
        scores: ``[N, K]`` score of each proposal for each object class.
        score_thresh: boxes scoring below it are dropped.
        nms: IoU above which the lower-scored of two boxes of one class is suppressed.
        max_per_class, max_per_image: caps (0 = none), best boxes kept.

    Returns:
        Detections sorted by decreasing score; labels are ``1..K``.
    """
    rows, cols = select_rows(boxes, scores, score_thresh, nms, max_per_class, max_per_image)
    return detections_at(boxes, scores, rows, cols)


def detections_at(boxes: np.ndarray, scores: np.ndarray, rows, cols) -> Detections:
    """The detections of proposals ``rows`` for classes ``cols`` (0-based), as
    :func:`select_rows` gives them: each its box for its class and its score."""
    if len(rows) == 0:
        return Detections.empty()
    return Detections(_boxes_at(boxes, rows, cols), scores[rows, cols].astype(np.float32),
                      cols + 1)  # fmt: skip


def _boxes_at(boxes: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float32 ``[D, 4]``: the box of each (row, class) pair, from ``[N, 4]`` boxes or the
    ``[N, K, 4]`` of box regression."""
    boxes = np.asarray(boxes, dtype=np.float32)
    return boxes[rows, cols] if boxes.ndim == 3 else boxes[rows]


def select_rows(
    boxes: np.ndarray,
    scores: np.ndarray,
    score_thresh: float,
    nms: float,
    max_per_class: int = 0,
    max_per_image: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`select_detections` keeps: the proposal (row, int64 ``[D]``) and class
    (column, 0-based, int64 ``[D]``) of each detection, best first."""
    rows, cols = np.nonzero((scores >= score_thresh) & (scores > -np.inf))
    if len(rows) == 0:
        return rows.astype(np.int64), cols.astype(np.int64)
    candidate = torch.from_numpy(np.ascontiguousarray(_boxes_at(boxes, rows, cols)))
    score = torch.from_numpy(np.ascontiguousarray(scores[rows, cols], dtype=np.float32))
    label = torch.from_numpy(cols.astype(np.int64) + 1)
    keep = batched_nms(candidate, score, label, nms).numpy()  # best first
    if max_per_class:
        ranks = np.zeros(len(keep), np.int64)
        for k in np.unique(label[keep].numpy()):
            mine = label[keep].numpy() == k
            ranks[mine] = np.arange(mine.sum())
        keep = keep[ranks < max_per_class]
    if max_per_image:
        keep = keep[:max_per_image]
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)
