"""Inference settings: where and how a trained network scores regions.

Kept free of torch, so that the command line can describe them without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rcnn.errors import ConfigError

DEVICE_HELP = "cpu, cuda, cuda:N (auto: cuda when present)"
AMP_HELP = (
    "bfloat16 autocast (float16 with loss scaling on GPUs without bfloat16); default: on "
    "where the device computes bfloat16 natively (CUDA GPUs, CPUs with AVX512-BF16 or AMX; "
    "RCNN_NATIVE_BF16=0/1 overrides the detection), off elsewhere"
)
CUDA_BATCH, CPU_BATCH = 1024, 256  # scoring batches (docs/performance.md)


@dataclass(frozen=True)
class InferenceConfig:
    """How a trained network scores regions: shared by the detector, feature extraction, the
    SVM and box-regression stages, `rcnn test` and `rcnn evaluate`."""

    device: str = "auto"  # auto: cuda when present
    batch: int = 0  # regions a forward pass; 0: 1024 on CUDA, 256 elsewhere
    amp: bool | None = None  # bfloat16 autocast; None: where the device has it natively
    threads: int = 2  # warping threads of the CPU path

    def __post_init__(self):
        if self.batch < 0:
            raise ConfigError(f"--batch must be >= 0 (0: automatic), got {self.batch}")
        if self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
