"""Hard-negative mining, R-CNN's way of training its SVMs when the negatives are too many to
hold (Girshick's ``rcnn_train.m`` and Fast R-CNN's ``tools/train_svms.py``).

For class k, the positives are the class's (non-difficult) ground-truth boxes and the
negatives are proposals overlapping every box of the class by IoU < 0.3. One pass over the
negatives in region order, every class scored at once block by block: each class first caches
its first ``first_negatives`` negatives and trains; from there a negative scoring above -1
(hard) joins its class's cache, a class trains again whenever 2000 joined, dropping the cached
ones that then score below -1.2 (easy), and every class trains once more at the end.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

import numpy as np

from rcnn.errors import RcnnError
from rcnn.heads.config import SVMConfig
from rcnn.heads.negatives import NegativePool, half
from rcnn.heads.svm import ClassTrainer, SVMModel, train_classes

logger = logging.getLogger(__name__)


@dataclass
class ClassExamples:
    """The training examples of one class: positive and candidate negative region indices."""

    positives: np.ndarray
    negatives: np.ndarray


def class_examples(regions, k: int, neg_iou: float) -> ClassExamples:
    """Non-difficult ground-truth regions of class ``k`` and proposals below ``neg_iou``."""
    truth = regions.require_truth("train-svm")
    gt_row = np.maximum(truth.gt_index, 0)
    positives = np.flatnonzero(
        truth.is_gt & (regions.labels == k) & (truth.gt_index >= 0) & ~truth.difficult[gt_row]
    )
    negatives = np.flatnonzero(~truth.is_gt & (truth.class_ious[:, k - 1] < neg_iou))
    return ClassExamples(positives, negatives)


def train_svms(
    regions, features, cfg: SVMConfig, report=None, device="cpu"
) -> tuple[SVMModel, list[dict]]:
    """Trains every class's SVM with hard-negative mining (see the module's notes). The feature
    scale (mean L2 norm ``cfg.feature_norm``) is taken from the positives and the first
    negatives, so every region goes through the network once a pass, the positives aside.

    Only the positives and the caches are held (float16 features); ``features`` is a feature
    store or a :class:`rcnn.heads.stream.FeatureStream`, whose blocks arrive in the same order,
    so both give the same SVMs. ``report(row)`` is called at each training. Returns the model
    and the log (one row per class and training).
    """
    examples = _checked_examples(regions, cfg)
    positives = _features_of(features, [ex.positives for ex in examples])
    miner = Miner(regions, examples, positives, cfg, report, device)
    _log_negatives(miner)
    for pass_ in range(1, cfg.passes + 1):
        for rows, x in features.stream(miner.negatives):
            miner.block(rows, x, pass_)
        miner.end_pass(pass_)
    return miner.model()


def train_layer_svms(regions, stream, cfg: SVMConfig, report=None, device="cpu") -> dict:
    """Every class's SVMs on each layer of a :class:`~rcnn.heads.stream.FeatureStream` of
    several (``stream.layers``), from one pass of the network: ``{layer: (model, log)}``. The
    layers' caches share ``cfg.max_cache_gb`` (:func:`layer_budgets`)."""
    examples = _checked_examples(regions, cfg)
    union = np.unique(np.concatenate([ex.positives for ex in examples]))
    found = stream.rows_layers(union)
    budgets = layer_budgets(cfg.max_cache_gb * 1e9, {n: x.shape[1] for n, x in found.items()})
    miners = {}
    for layer, rows in found.items():
        rows = half(rows)
        positives = [rows[np.searchsorted(union, ex.positives)] for ex in examples]
        miners[layer] = Miner(regions, examples, positives, replace(cfg, layer=layer), report,
                              device, budgets[layer])  # fmt: skip
    _log_negatives(next(iter(miners.values())))  # the same candidates for every layer
    for pass_ in range(1, cfg.passes + 1):
        for rows, xs in stream.stream_layers(next(iter(miners.values())).negatives):
            for layer, miner in miners.items():
                miner.block(rows, xs[layer], pass_)
        for miner in miners.values():
            miner.end_pass(pass_)
    return {layer: miner.model() for layer, miner in miners.items()}


def layer_budgets(total: float, dims: dict[str, int]) -> dict[str, float]:
    """``--max-cache-gb`` shared by layers mined together: each layer's caches get a share in
    proportion to the bytes of one of its negatives, so every layer can hold as many
    negatives (pool5's 9216 features take 2.2 times fc7's 4096), and together they stay
    under ``total`` bytes."""
    rows = {layer: NegativePool(dim, 0).row_bytes for layer, dim in dims.items()}
    return {layer: total * size / sum(rows.values()) for layer, size in rows.items()}


class Miner:
    """The state of one pass of hard-negative mining over the negatives of every class: the
    classes' trainers, their shared pool of cached negatives, the feature scale once known,
    and the log. :meth:`block` takes the blocks of the pass in order."""

    def __init__(self, regions, examples, positives, cfg: SVMConfig, report=None, device="cpu",
                 budget: float | None = None):  # fmt: skip
        self.regions, self.examples, self.cfg, self.report = regions, examples, cfg, report
        self.truth = regions.require_truth("train-svm")
        self.negatives = np.unique(np.concatenate([ex.negatives for ex in examples]))
        self.negatives_from = negative_images(regions, self.negatives)
        self.dim = positives[0].shape[1]
        # Bytes its caches may take: --max-cache-gb, or a layer's share of it.
        self.budget = cfg.max_cache_gb * 1e9 if budget is None else budget
        self.pool = NegativePool(self.dim, len(regions))
        # Room for the first negatives and a retraining's worth, within the budget.
        room = cfg.first_negatives + cfg.retrain_every
        self.pool.reserve(min(room, int(self.budget / self.pool.row_bytes)))
        self.trainers = {c: ClassTrainer(regions.classes[c], positives[c], cfg, self.pool, device)
                         for c, ex in enumerate(examples) if len(ex.positives)}  # fmt: skip
        self.log: list[dict] = []
        self.scale, self.first = None, []  # first: the first negatives' features, for the scale

    def train(self, group: list[ClassTrainer], pass_: int) -> None:
        for row in train_classes(group, self.scale, pass_) if group else []:
            row["cache_mb"] = round(self.pool.nbytes / 1e6, 3)
            self.log.append(row)
            if self.report is not None:
                self.report(row)

    def block(self, rows: np.ndarray, x: np.ndarray, pass_: int) -> None:
        """Mines a block of negatives (their region indices and float32 features)."""
        cfg, trainers = self.cfg, self.trainers
        truth = self.truth
        negative = ~truth.is_gt[rows, None] & (truth.class_ious[rows] < cfg.neg_iou)
        if self.scale is None:  # the first negatives of each class go to its cache as they come
            _cache_first(trainers, rows, x, negative, cfg.first_negatives)
            hold_budget(self.pool, trainers.values(), self.budget)
            self.first.append(half(x))
            if any(len(t.cache) < cfg.first_negatives for t in trainers.values()):
                return
            self.scale = _scale([t.positives for t in trainers.values()], self.first, cfg)
            self.first = []
            self.train(list(trainers.values()), 0)
            # then this same block is mined with the first SVMs, as every later one
        weights = np.stack([t.weights for t in trainers.values()])
        biases = np.array([t.bias for t in trainers.values()], np.float32)
        scores = (x @ weights.T) * self.scale + biases  # [B, K]: every class at once
        for j, (c, trainer) in enumerate(trainers.items()):
            hard = negative[:, c] & (scores[:, j] > cfg.hard)
            if hard.any():
                trainer.add(rows[hard], x[hard], scores[hard, j])
        hold_budget(self.pool, trainers.values(), self.budget)
        self.train([t for t in trainers.values() if t.due], pass_)

    def end_pass(self, pass_: int) -> None:
        """Every class trains once more at the end of a pass."""
        if self.scale is None:  # fewer negatives in all than a first training takes
            self.scale = _scale([t.positives for t in self.trainers.values()], self.first,
                                self.cfg)  # fmt: skip
        self.train(list(self.trainers.values()), pass_)

    def model(self) -> tuple[SVMModel, list[dict]]:
        count = len(self.examples)
        weights = np.zeros((count, self.dim), np.float32)
        biases = np.zeros(count, np.float32)
        for c, trainer in self.trainers.items():
            weights[c], biases[c] = trainer.weights, trainer.bias
        classes = list(self.regions.classes)
        untrained = [classes[c] for c in range(count) if c not in self.trainers]
        info = {"config": asdict(self.cfg), "passes": self.cfg.passes, "untrained": untrained,
                "negatives_from": self.negatives_from}  # fmt: skip
        return SVMModel(weights, biases, self.scale, classes, info), self.log


def _log_negatives(miner: Miner) -> None:
    found = miner.negatives_from
    logger.info("mining the negatives of %d images, %d of them background only",
                found["images"], found["background_only"])  # fmt: skip


def negative_images(regions, negatives: np.ndarray) -> dict:
    """How many images the candidate negatives come from, and how many of those have no box of
    a chosen class (background only: kept by the paper preset)."""
    truth = regions.require_truth("train-svm")
    images = np.unique(regions.image_index[negatives])
    background = np.setdiff1d(images, truth.image)
    return {"images": int(len(images)), "background_only": int(len(background))}


def hold_budget(pool: NegativePool, trainers, budget: float) -> int:
    """Drops the easiest cached negatives of all classes together (the lowest scores, each by
    its class's latest SVM) when the caches take more than ``budget`` bytes, until they take
    nine tenths of it; returns how many went. A region's memory is freed when no class keeps
    it any more, so as many are dropped, in order, as free what is needed."""
    if pool.nbytes <= budget:
        return 0
    trainers = list(trainers)
    scores = np.concatenate([t.cache.scores for t in trainers])
    slots = np.concatenate([t.cache.slots for t in trainers])
    owner = np.repeat(np.arange(len(trainers)), [len(t.cache) for t in trainers])
    order = np.argsort(scores, kind="stable")
    # A slot is freed once the last class keeping it drops it: at that position of the order.
    freed_at = np.full(len(pool.holders), -1)
    np.maximum.at(freed_at, slots[order], np.arange(len(order)))
    freed_at = np.sort(freed_at[freed_at >= 0])
    needed = int(np.ceil((pool.nbytes - 0.9 * budget) / pool.row_bytes))
    count = int(freed_at[min(needed, len(freed_at)) - 1]) + 1
    drop = np.zeros(len(scores), bool)
    drop[order[:count]] = True
    for k, trainer in enumerate(trainers):
        trainer.over_budget += trainer.cache.keep(~drop[owner == k])
    logger.info("%d cached negatives dropped to hold the caches under %.3g GB", count,
                budget / 1e9)  # fmt: skip
    emptied = [t for k, t in enumerate(trainers) if len(t.cache) == 0 and (owner == k).any()]
    if emptied:
        logger.warning("--max-cache-gb %.3g: %d class(es) have no cached negative left and train "
                       "on their positives alone until the pass brings more; raise the budget",
                       budget / 1e9, len(emptied))  # fmt: skip
    return count


def _cache_first(trainers: dict, rows, x, negative, wanted: int) -> None:
    """Caches each class's negatives of a block until it holds ``wanted`` (its first
    training's), without counting them as hard."""
    for c, trainer in trainers.items():
        room = max(wanted - len(trainer.cache), 0)
        mine = np.flatnonzero(negative[:, c])[:room]
        trainer.cache.add(rows[mine], x[mine])


def _scale(positives: list[np.ndarray], first: list[np.ndarray], cfg: SVMConfig) -> float:
    """The feature scale, from the positives and the first negatives."""
    sample = np.concatenate([*positives, *first])
    mean = float(np.linalg.norm(sample.astype(np.float32), axis=1).mean())
    if not np.isfinite(mean) or mean <= 0:
        raise RcnnError("the features are all zero or not finite: is the model trained?")
    return cfg.feature_norm / mean


def _features_of(features, groups: list[np.ndarray]) -> list[np.ndarray]:
    """float16 features of each group of regions, each region computed (or read) once."""
    union = np.unique(np.concatenate(groups)) if groups else np.zeros(0, np.int64)
    rows = half(features.rows(union))
    return [rows[np.searchsorted(union, group)] for group in groups]


def _checked_examples(regions, cfg: SVMConfig) -> list[ClassExamples]:
    if not regions.info.get("labels", {}).get("add_gt"):
        raise RcnnError(
            f"the regions of split '{regions.info.get('split', '?')}' were prepared without "
            "their ground-truth boxes, which the SVMs take as positives (and without the "
            "proposals that touch no object, which they need as negatives): prepare them with "
            "`rcnn prepare --preset paper`"
        )
    examples = [class_examples(regions, k, cfg.neg_iou) for k in range(1, len(regions.classes) + 1)]
    split = regions.info.get("split", "?")
    missing = [regions.classes[k] for k, ex in enumerate(examples) if len(ex.positives) == 0]
    if len(missing) == len(examples):
        raise RcnnError(f"no class has a (non-difficult) ground-truth box in split '{split}'")
    for name in missing:  # no positive to learn from: the class is never detected
        logger.warning("class %r has no (non-difficult) ground-truth box in split '%s': it gets "
                       "no SVM and is never detected with --scorer svm", name, split)  # fmt: skip
    for k, ex in enumerate(examples, start=1):
        if len(ex.negatives) == 0:
            raise RcnnError(f"class {regions.classes[k - 1]!r} has no negative region")
    return examples
