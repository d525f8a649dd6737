"""Settings of R-CNN's stages after fine-tuning: features, the SVMs and the box regressors.

Kept free of torch, so that the command line can describe them without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rcnn.data.annotations import check_split_name
from rcnn.errors import ConfigError, check_numbers
from rcnn.heads.feature_store import CHUNK
from rcnn.modeling.config import LAYERS
from rcnn.runtime.config import InferenceConfig

SOLVERS = ("newton", "liblinear")
PARTS = ("features", "svm", "bbox")  # what the stages after fine-tuning add to a run folder


def run_part(model: str | Path, part: str) -> Path:
    """Where a run keeps its feature store, SVMs or box regressors by default: ``RUN/features``,
    ``RUN/svm``, ``RUN/bbox``, for a run folder or a checkpoint file in one."""
    assert part in PARTS, part
    model = Path(model)
    return (model if model.is_dir() else model.parent) / part


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


@dataclass
class FeaturesConfig:
    model: str  # run folder or checkpoint
    data: str  # an `rcnn prepare` output folder
    out: str
    splits: list[str] = field(default_factory=lambda: ["train"])
    layers: list[str] = field(default_factory=lambda: ["fc7"])
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    chunk: int = CHUNK
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        for split in self.splits:
            check_split_name(split)
        unknown = [name for name in self.layers if name not in LAYERS]
        _check([
            (bool(self.layers) and not unknown, f"--layers must name some of {LAYERS}, got "
             f"{self.layers}"),
            (self.chunk >= 1, f"the chunk size must be >= 1, got {self.chunk}"),
        ])  # fmt: skip


@dataclass
class HeadConfig:
    """Where the SVM and box-regression stages find their network, regions and features."""

    model: str  # run folder or checkpoint
    data: str  # `rcnn prepare` output folder (made with --preset paper for the SVMs)
    out: str | None = None  # default: RUN/svm or RUN/bbox
    features: str | None = None  # default: RUN/features
    split: str = "train"
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    progress: bool = True
    overwrite: bool = False  # replace the SVMs or regressors already in out

    def __post_init__(self):
        check_split_name(self.split)


@dataclass
class SVMConfig:
    """R-CNN's SVM hyper-parameters (``rcnn_train.m``, Fast R-CNN's ``train_svms.py``)."""

    C: float = 0.001
    pos_weight: float = 2.0  # loss weight of a positive
    bias: float = 10.0  # the constant feature liblinear appends (intercept_scaling)
    feature_norm: float = 20.0  # features are scaled to this mean L2 norm
    hard: float = -1.0  # a negative scoring above this is hard: it joins the cache
    easy: float = -1.2  # a cached negative scoring below this is dropped after a training
    neg_iou: float = 0.3  # negatives overlap every box of the class less than this
    passes: int = 1  # passes over the negatives (the paper: one is enough)
    retrain_every: int = 2000  # hard negatives that make a class train again mid-pass
    first_negatives: int = 5000  # random negatives of the first training, per class
    seed: int = 0
    max_iter: int = 20000  # liblinear's iteration limit
    solver: str = "newton"  # newton (rcnn.heads.solver, warm-started) or liblinear
    # The hard-negative caches of all classes together: the easiest cached negatives go
    # first past it. VOC2007's 20 classes fit a 16 GB machine with it, beside the decoded
    # images (2.8 GB) and the network.
    max_cache_gb: float = 8.0
    layer: str = "fc7"  # the features the SVMs score: pool5, fc6 or fc7 (the paper's Table 2)

    def __post_init__(self):
        check_numbers(self)
        _check([
            (self.C > 0, f"--C must be > 0, got {self.C}"),
            (self.pos_weight > 0, f"--pos-weight must be > 0, got {self.pos_weight}"),
            (self.easy < self.hard, f"--easy ({self.easy}) must be below --hard ({self.hard})"),
            (self.passes >= 1, f"--passes must be >= 1, got {self.passes}"),
            (self.retrain_every >= 1, f"--retrain-every must be >= 1, got {self.retrain_every}"),
            (self.first_negatives >= 1, "--first-negatives must be >= 1"),
            (self.solver in SOLVERS, f"--solver must be one of {SOLVERS}, got {self.solver!r}"),
            (self.max_cache_gb > 0, f"--max-cache-gb must be > 0, got {self.max_cache_gb}"),
            (self.layer in LAYERS, f"--layer must be one of {LAYERS}, got {self.layer!r}"),
        ])  # fmt: skip


@dataclass
class BBoxConfig:
    """R-CNN's box-regression hyper-parameters."""

    ridge: float = 1000.0  # lambda
    min_iou: float = 0.6  # a training region overlaps a box of its class at least this
    feature_norm: float = 20.0
    seed: int = 0

    def __post_init__(self):
        check_numbers(self)
        _check([
            (self.ridge >= 0, f"--ridge must be >= 0, got {self.ridge}"),
            (0 < self.min_iou <= 1, f"--min-iou must be in (0, 1], got {self.min_iou}"),
        ])  # fmt: skip
