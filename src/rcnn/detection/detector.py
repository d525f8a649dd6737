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

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import batched_nms

from rcnn.data.batches import chunks
from rcnn.data.dataset import ImageStore
from rcnn.data.proposals import ProposalConfig, ProposalPool, ProposalResult
from rcnn.data.regions import RegionSet
from rcnn.detection.config import DetectorConfig
from rcnn.errors import ConfigError
from rcnn.modeling.model import build_model
from rcnn.progress import progress_bar
from rcnn.training.config import TrainConfig
from rcnn.training.train import (
    CheckpointError,
    autocast,
    config_from_checkpoint,
    configure_device,
    for_device,
    input_stats,
    load_checkpoint,
    make_feeder,
    resolve_device,
)

logger = logging.getLogger(__name__)


@dataclass
class Detections:
    """One image's detections, best first."""

    boxes: np.ndarray  # float32 [D, 4], project convention
    scores: np.ndarray  # float32 [D]
    labels: np.ndarray  # int64 [D], 1..K

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


@dataclass
class LoadedModel:
    """A fine-tuned classifier with what scoring needs to know about it."""

    model: torch.nn.Module
    classes: list[str]  # object classes; output 0 is background
    config: TrainConfig  # backbone, input size, context padding, normalization
    source: str


def load_model(path: str | Path, classes: list[str] | None = None) -> LoadedModel:
    """A run folder (its ``best.pt``), a ``best.pt``/``last.pt`` checkpoint, or a plain state dict
    such as ``model.pth`` with ``classes`` (its settings are read from a ``config.json`` beside
    it when there is one: backbone, input size, context padding, normalization)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: model not found (give a run folder, best.pt or model.pth)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable model, truncated or damaged") from err
    if isinstance(state, dict) and state.get("format") == "rcnn-checkpoint":
        ckpt = load_checkpoint(path)
        cfg, names = config_from_checkpoint(ckpt), list(ckpt["classes"][1:])
        if classes and [c.lower() for c in classes] != [c.lower() for c in names]:
            raise CheckpointError(f"--classes {' '.join(classes)}: {path} was trained for {names}")
        weights = ckpt["model"]
    else:
        if not classes:
            raise ConfigError(
                f"{path} holds only weights: pass --classes (in the training order) or give its "
                "run folder"
            )
        cfg, names, weights = _config_beside(path), list(classes), state
    model = build_model(cfg.backbone, len(names) + 1, "none")
    head = weights.get(f"{model.rcnn_head}.weight") if isinstance(weights, dict) else None
    if head is not None and head.shape[0] != len(names) + 1:
        raise CheckpointError(
            f"{path} has {head.shape[0]} outputs but --classes gives {len(names)} classes "
            f"+ background"
        )
    try:
        model.load_state_dict(weights)
    except (RuntimeError, AttributeError) as err:
        raise CheckpointError(f"{path} does not fit --backbone {cfg.backbone}") from err
    return LoadedModel(model.eval(), names, cfg, str(path))


def _config_beside(path: Path) -> TrainConfig:
    config = path.parent / "config.json"
    if not config.is_file():
        logger.info("no config.json beside %s: AlexNet at 227x227, no context padding", path)
        return TrainConfig()
    known = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{k: v for k, v in json.loads(config.read_text()).items() if k in known})


class Detector:
    """Scores proposals with a fine-tuned classifier and turns the scores into detections."""

    def __init__(self, loaded: LoadedModel, cfg: DetectorConfig):
        self.cfg, self.classes = cfg, loaded.classes
        self.device = resolve_device(cfg.device)
        configure_device(self.device)
        train = replace(loaded.config, workers=cfg.threads, pipeline="auto")
        self.train = for_device(replace(train, amp=cfg.amp, val_batch=cfg.batch), self.device)
        self.mean, self.std = input_stats(self.train)
        fmt = torch.channels_last if self.train.channels_last else torch.contiguous_format
        self.model = loaded.model.to(self.device, memory_format=fmt).eval()

    @torch.no_grad()
    def score(self, paths: list[str], boxes: list[np.ndarray], sizes: list) -> list[np.ndarray]:
        """Softmax probabilities ``[K_i, K + 1]`` of each image's boxes ``[K_i, 4]``."""
        counts = [len(b) for b in boxes]
        index = np.repeat(np.arange(len(paths)), counts)
        flat = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int32)
        zeros = np.zeros(len(flat))
        regions = RegionSet(paths, index, flat, zeros, zeros, self.classes, list(sizes))
        store = ImageStore.of(regions, self.cfg.threads)
        order = chunks(np.arange(len(regions)), self.train.val_batch)
        feeder = make_feeder(regions, order, self.train, self.device, self.mean, self.std, store)
        probs = []
        for images, _ in feeder:  # no torchrun gathering here: each process scores its images
            with autocast(self.device, self.train.amp):
                probs.append(self.model(images).float().softmax(1))
        probs = torch.cat(probs).cpu().numpy() if probs else np.zeros((0, len(self.classes) + 1))
        return np.split(probs, np.cumsum(counts)[:-1])

    def postprocess(self, boxes: np.ndarray, probs: np.ndarray) -> Detections:
        """Threshold, per-class NMS and caps for one image's scored boxes."""
        return select_detections(
            boxes,
            probs[:, 1:],
            self.cfg.score_thresh,
            self.cfg.nms,
            self.cfg.max_per_class,
            self.cfg.max_per_image,
        )

    def run(
        self, paths: list[str], progress: bool = True
    ) -> Iterator[tuple[ProposalResult, Detections | None]]:
        """Detections of every image, in order; ``None`` with ``result.error`` for an image
        that could not be read. Proposals for the next chunk are computed meanwhile."""
        config = ProposalConfig(self.cfg.mode, self.cfg.max_side)
        pool = ProposalPool(config, self.cfg.cache_dir, self.cfg.workers)
        # A chunk smaller than the pool would leave Selective Search processes idle: with 8
        # images a chunk and 16 processes, searching was the bottleneck on a 16-core machine.
        size = self.cfg.chunk or max(8, 2 * pool.workers)
        groups = [paths[i : i + size] for i in range(0, len(paths), size)]
        bar = progress_bar(total=len(paths), enabled=progress, desc="detect", unit="img")
        # Left in reverse order: the executor waits for its search before the pool stops.
        with bar, pool, ThreadPoolExecutor(1) as ahead:
            pending = ahead.submit(pool.compute, groups[0]) if groups else None
            for i in range(len(groups)):
                results = pending.result()
                if i + 1 < len(groups):
                    pending = ahead.submit(pool.compute, groups[i + 1])
                yield from self._detect(results)
                bar.update(len(results))

    def _detect(self, results: list[ProposalResult]):
        good = [r for r in results if not r.error and r.boxes is not None and len(r.boxes)]
        probs = self.score([r.path for r in good], [r.boxes for r in good], [r.size for r in good])
        scored = {id(r): p for r, p in zip(good, probs, strict=True)}
        for r in results:
            if r.error:
                yield r, None
            elif id(r) not in scored:
                yield r, Detections.empty()  # no proposal at all
            else:
                yield r, self.postprocess(r.boxes, scored[id(r)])


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
    rows, cols = np.nonzero(scores >= score_thresh)
    if len(rows) == 0:
        return Detections.empty()
    boxes = np.asarray(boxes, dtype=np.float32)
    chosen = boxes[rows, cols] if boxes.ndim == 3 else boxes[rows]
    candidate = torch.from_numpy(np.ascontiguousarray(chosen))
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
    return Detections(chosen[keep], scores[rows, cols][keep].astype(np.float32), cols[keep] + 1)
