"""Training configuration: the recipe's hyper-parameters, its presets, and their checks.

Kept free of torch so that the command line can describe them without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rcnn.errors import ConfigError, check_numbers

PIPELINES = ("auto", "device", "threads", "loader")  # where regions are warped (data.feeders)
OPTIMIZERS = ("sgd", "adam")
BEST_METRICS = ("val_balanced_acc", "val_acc", "val_object_ap", "val_recipe_acc", "val_loss")


@dataclass
class TrainConfig:
    data: str = ""  # the `rcnn prepare` output folder (holds train/ and val/)
    out: str = ""
    backbone: str = "alexnet"
    weights: str = "imagenet"  # imagenet | none | path to a state dict
    epochs: int = 25
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 7
    lr_gamma: float = 0.1
    head_lr_mult: float = 1.0
    num_pos: int = 32
    num_neg: int = 96
    input_size: int = 227
    context_pad: int = 0
    norm: str = "imagenet"  # imagenet: the backbone's weights metadata; half: 0.5 / 0.5
    val_max: int = 0  # 0 = the whole validation set
    val_batch: int = 0  # 0: 1024 on CUDA, 256 elsewhere (docs/performance.md)
    best_metric: str = "val_balanced_acc"
    workers: int = 2
    device: str = "auto"
    pipeline: str = "auto"  # device (default on CUDA) | threads (default on CPU) | loader
    amp: bool | None = None  # None: bfloat16 autocast where the device has it natively
    channels_last: bool = True  # faster for AlexNet on CPUs and GPUs (docs/performance.md)
    compile: bool = False  # torch.compile the model
    cuda_graphs: bool | None = None  # None: the training step as a CUDA graph where it can be
    overlap_val: bool | None = None  # validate epoch N while N+1 trains (None: off)
    lr_scale: str = "none"  # linear: lr x number of processes (for larger global batches)
    tensorboard: bool = False  # event files in RUN/tensorboard (the tensorboard package)
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        check_numbers(self)
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (
                self.optimizer in OPTIMIZERS,
                f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}",
            ),
            (self.lr_step >= 1, f"--lr-step must be >= 1, got {self.lr_step}"),
            (self.num_pos > 0 and self.num_neg > 0, "--num-pos and --num-neg must be > 0"),
            (self.input_size >= 32, f"--input-size must be >= 32, got {self.input_size}"),
            (
                0 <= 2 * self.context_pad < self.input_size,
                f"--context-pad must be in [0, --input-size / 2), got {self.context_pad}",
            ),
            (
                self.norm in ("imagenet", "half"),
                f"--norm must be imagenet or half, got {self.norm!r}",
            ),
            (self.best_metric in BEST_METRICS, f"--best-metric must be one of {BEST_METRICS}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.val_batch >= 0, f"--val-batch must be >= 0, got {self.val_batch}"),
            (self.val_max >= 0, f"--val-max must be >= 0 (0 = all), got {self.val_max}"),
            (
                self.lr_scale in ("none", "linear"),
                f"--lr-scale must be none or linear, got {self.lr_scale!r}",
            ),
            (
                self.pipeline in PIPELINES,
                f"--pipeline must be one of {PIPELINES}, got {self.pipeline!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


PRESETS = {
    # The recipe: SGD 1e-3, momentum 0.9, StepLR(7, 0.1), 25 epochs, batches of 32 + 96.
    "seed": {},
    # The recipe's three remedies for overfitting, one at a time and together.
    "lr-1e-4": {"lr": 1e-4},
    "weight-decay": {"weight_decay": 1e-4},
    "adam": {"optimizer": "adam", "lr": 1e-4},
    "remedies": {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-4},
    # Girshick et al. 2014: 16 pixels of context, weight decay 5e-4, new layer at 10x lr.
    "paper": {"context_pad": 16, "weight_decay": 5e-4, "head_lr_mult": 10.0},
}


def train_config(preset: str, **overrides) -> TrainConfig:
    """A preset's config with the flags the user set (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset must be one of {sorted(PRESETS)}, got {preset!r}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(**values)
