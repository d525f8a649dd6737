"""Detector settings (kept free of torch, so that the command line can describe them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rcnn.data.config import DEFAULT_MAX_PROPOSALS, DEFAULT_MAX_SIDE, MODES
from rcnn.errors import ConfigError, check_numbers
from rcnn.runtime.config import InferenceConfig

SCORERS = ("softmax", "svm")
DEFAULT_THRESH = {"softmax": 0.6, "svm": 0.0}  # the reference detector's; an SVM's margin


@dataclass(frozen=True)
class Variant:
    """How proposals become detections: ``softmax`` (the fine-tuned network's probability) or
    ``svm`` (per-class SVMs on the layer their files name: fc7 by default), with or without
    box regression. ``svm`` names the SVMs' folder (default: the detector's)."""

    name: str
    scorer: str = "softmax"
    bbox_reg: bool = False
    svm: str | None = None


@dataclass
class DetectorConfig:
    scorer: str = "softmax"
    svm: str | None = None  # `rcnn train-svm` folder (default: the run's svm/)
    bbox_reg: str | None = None  # `rcnn train-bbox` folder; None = no box regression
    # (the ablation's box-regression variant looks in the run's bbox/ when it is None)
    score_thresh: float | None = None  # None: 0.6 for softmax, 0 for SVM scores
    keep_all: bool = False  # evaluation: no score threshold at all (low scores add to AP)
    nms: float = 0.3  # IoU above which a lower-scored box of the same class is suppressed
    max_per_image: int = 100  # 0 = no cap
    max_per_class: int = 0  # per image and class; 0 = no cap
    mode: str = "fast"  # Selective Search at test time, as the reference detector
    max_side: int = DEFAULT_MAX_SIDE  # larger images are shrunk for Selective Search
    proposals: str | None = None  # precomputed proposals (a .mat file) instead of a search
    max_proposals: int = DEFAULT_MAX_PROPOSALS  # boxes read of an image of `proposals`
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    workers: int = 0  # Selective Search processes; 0 = one per core
    chunk: int = 0  # images scored together; 0: twice the Selective Search processes, >= 8
    cache_dir: str | None = None

    def __post_init__(self):
        check_numbers(self)
        thresh = self.score_thresh
        checks = [
            (self.scorer in SCORERS, f"--scorer must be one of {SCORERS}, got {self.scorer!r}"),
            (
                self.svm is None or self.scorer == "svm",
                f"--svm {self.svm} is read only with --scorer svm (scoring by {self.scorer})",
            ),
            (
                thresh is None or self.scorer != "softmax" or 0 <= thresh <= 1,
                f"--score-thresh must be in [0, 1] for softmax scores, got {thresh}",
            ),
            (0 < self.nms <= 1, f"--nms must be in (0, 1], got {self.nms}"),
            (self.max_per_image >= 0, f"--max-per-image must be >= 0, got {self.max_per_image}"),
            (self.max_per_class >= 0, f"--max-per-class must be >= 0, got {self.max_per_class}"),
            (self.mode in MODES, f"--mode must be one of {MODES}, got {self.mode!r}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.chunk >= 0, f"--chunk must be >= 0, got {self.chunk}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def variant(self) -> Variant:
        name = self.scorer + ("-bbox" if self.bbox_reg else "")
        return Variant(name, self.scorer, self.bbox_reg is not None)

    def threshold(self, scorer: str) -> float:
        """The score below which boxes are dropped, for ``scorer``'s scores."""
        if self.keep_all:
            return float("-inf")
        return DEFAULT_THRESH[scorer] if self.score_thresh is None else self.score_thresh


def eval_detector_config(**overrides) -> DetectorConfig:
    """The detector's settings for evaluation (`rcnn test`): every box counts (no score
    threshold; low-scoring boxes still add to AP), at most 100 per image and class after NMS."""
    values = {"keep_all": True, "max_per_class": 100, "max_per_image": 0}
    return DetectorConfig(**{**values, **overrides})
