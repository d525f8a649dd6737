"""Devices and precision: which device a name means, whether it computes bfloat16 natively,
the autocast that goes with it, and the inference settings decided for it."""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from rcnn.errors import ConfigError
from rcnn.runtime.config import CPU_BATCH, CUDA_BATCH, InferenceConfig


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``, or another torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def configure_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the device has it; float16 (with loss scaling) on older GPUs."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def default_amp(device: torch.device) -> bool:
    """bfloat16 autocast where the device computes bfloat16 natively: CUDA GPUs that have it
    and CPUs with AVX512-BF16 or AMX. Elsewhere it is emulated and slower (the speeds are in
    docs/performance.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return native_bf16_cpu()
    return False


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX).
    ``RCNN_NATIVE_BF16=1`` or ``0`` in the environment overrides the detection, so that both
    defaults can be tried on any machine (bfloat16 is emulated, slower, where it is not
    native)."""
    forced = os.environ.get("RCNN_NATIVE_BF16", "")
    if forced in ("0", "1"):
        return forced == "1"
    native = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in native)


def precision_name(device: torch.device, amp: bool) -> str:
    """What the numbers are computed in: ``float32``, or the autocast type with ``amp``."""
    return str(amp_dtype(device)).removeprefix("torch.") if amp else "float32"


def autocast(device: torch.device, enabled: bool | None):
    """Mixed precision for ``device`` (``None``: its default, :func:`default_amp`)."""
    enabled = default_amp(device) if enabled is None else enabled
    return torch.autocast(device.type, dtype=amp_dtype(device), enabled=enabled)


def resolve_inference(cfg: InferenceConfig, device: torch.device | None = None):
    """The device and ``cfg`` with its automatic settings decided for it: the batch and the
    precision. ``device`` overrides ``cfg.device`` (a torchrun process's own GPU)."""
    device = device if device is not None else resolve_device(cfg.device)
    configure_device(device)
    batch = cfg.batch or (CUDA_BATCH if device.type == "cuda" else CPU_BATCH)
    amp = default_amp(device) if cfg.amp is None else cfg.amp
    return device, replace(cfg, device=str(device), batch=batch, amp=amp)
