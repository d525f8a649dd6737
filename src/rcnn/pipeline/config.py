"""Settings of ``rcnn pipeline``; free of torch, so that the command line can show them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from rcnn.data.annotations import check_split_name, resolve_classes
from rcnn.data.config import ProposalConfig
from rcnn.data.readers import check_source
from rcnn.detection.config import eval_detector_config
from rcnn.errors import ConfigError
from rcnn.heads.config import SVMConfig
from rcnn.runtime.config import InferenceConfig
from rcnn.training.config import PRESETS, TrainConfig

# The regions each training preset fine-tunes on: the paper's rules (ground truth added,
# everything below IoU 0.5 background) with the paper's hyper-parameters, the recipe's
# (negatives that touch an object and are not tiny) with the recipe and its remedies.
LABELS_OF = {"paper": "paper"}  # any other preset: "seed"


@dataclass
class PipelineConfig:
    out: str
    voc_root: str | None = None  # a VOC folder, or None with coco and images
    coco: str | None = None  # COCO instances file ({split} for one per split)
    images: str | None = None  # its images' folder
    classes: list[str] = field(default_factory=lambda: ["car"])
    preset: str = "paper"  # training hyper-parameters (rcnn train --preset)
    train: dict = field(default_factory=dict)  # TrainConfig fields the user set
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    svm_split: str | None = None  # the SVMs' regions; None: trainval where it exists, else train
    proposals: ProposalConfig = field(default_factory=lambda: ProposalConfig("fast"))
    # precomputed proposals (.mat files) instead of a search: each stage reads the first file
    # holding every image of its splits (e.g. voc_2007_trainval.mat and voc_2007_test.mat)
    proposal_files: list[str] = field(default_factory=list)
    nms: float = 0.3  # the detector's; its proposals are those of `proposals` (or the files)
    svm: SVMConfig = field(default_factory=SVMConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    workers: int = 0  # Selective Search processes; 0 = one per core
    cache_dir: str | None = None  # proposal cache; None = the default one
    analyze: bool = True  # the paper's analysis of the top false positives
    progress: bool = True

    def __post_init__(self):
        # Absolute paths: `voc/`, `./voc` and `/data/voc` are one dataset to the stages'
        # records, which compare settings (a different spelling would redo every stage).
        for name in ("out", "voc_root", "coco", "images"):
            if getattr(self, name):
                setattr(self, name, os.path.abspath(getattr(self, name)))
        self.proposal_files = [os.path.abspath(path) for path in self.proposal_files]
        check_source(self.voc_root, self.coco, self.images)
        eval_detector_config(nms=self.nms)  # the detector's own checks, before any stage
        self.classes = resolve_classes(list(self.classes))
        if self.preset not in PRESETS:
            raise ConfigError(f"--preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for flag, split in (("--train-split", self.train_split), ("--val-split", self.val_split),
                            ("--test-split", self.test_split)):  # fmt: skip
            check_split_name(split, flag)
        if self.svm_split is not None:
            check_split_name(self.svm_split, "--svm-split")
        if len({self.train_split, self.val_split, self.test_split}) < 3:
            raise ConfigError(
                f"--train-split, --val-split and --test-split must differ, got "
                f"{self.train_split}, {self.val_split}, {self.test_split}"
            )
        unknown = sorted(set(self.train) - {f for f in TrainConfig.__dataclass_fields__})
        if unknown or {"data", "out"} & set(self.train):
            raise ConfigError(f"not training settings of the pipeline: {unknown or ['data/out']}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")

    @property
    def labels(self) -> str:
        """The label preset of the fine-tuning regions."""
        return LABELS_OF.get(self.preset, "seed")
