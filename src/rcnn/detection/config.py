"""Detector settings (kept free of torch, so that the command line can describe them)."""

from __future__ import annotations

from dataclasses import dataclass

from rcnn.errors import ConfigError

MODES = ("quality", "fast")  # Selective Search strategies, as in rcnn.data.proposals


@dataclass
class DetectorConfig:
    score_thresh: float = 0.6  # the reference detector's; `rcnn test` uses 0 (every box counts)
    nms: float = 0.3  # IoU above which a lower-scored box of the same class is suppressed
    max_per_image: int = 100  # 0 = no cap
    max_per_class: int = 0  # per image and class; 0 = no cap
    mode: str = "fast"  # Selective Search at test time, as the reference detector
    max_side: int = 0
    batch: int = 0  # regions per forward pass; 0: 1024 on CUDA, 256 elsewhere
    amp: bool | None = None  # None: bfloat16 where the device has it natively
    device: str = "auto"
    workers: int = 0  # Selective Search processes; 0 = one per core
    threads: int = 2  # warping threads on the CPU path
    chunk: int = 0  # images scored together; 0: twice the Selective Search processes, >= 8
    cache_dir: str | None = None

    def __post_init__(self):
        checks = [
            (
                0 <= self.score_thresh <= 1,
                f"--score-thresh must be in [0, 1], got {self.score_thresh}",
            ),
            (0 < self.nms <= 1, f"--nms must be in (0, 1], got {self.nms}"),
            (self.max_per_image >= 0, f"--max-per-image must be >= 0, got {self.max_per_image}"),
            (self.max_per_class >= 0, f"--max-per-class must be >= 0, got {self.max_per_class}"),
            (self.mode in MODES, f"--mode must be one of {MODES}, got {self.mode!r}"),
            (self.batch >= 0, f"--batch must be >= 0, got {self.batch}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
            (self.chunk >= 0, f"--chunk must be >= 0, got {self.chunk}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def eval_detector_config(**overrides) -> DetectorConfig:
    """The detector's settings for evaluation (`rcnn test`): every box counts (no score
    threshold; low-scoring boxes still add to AP), at most 100 per image and class after NMS."""
    values = {"score_thresh": 0.0, "max_per_class": 100, "max_per_image": 0}
    return DetectorConfig(**{**values, **overrides})
