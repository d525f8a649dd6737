"""``rcnn bench``: regions per second of the input pipeline and of full training steps.

Also builds region sets of the recipe's scale (hundreds of images, ~1M regions) without
running Selective Search, for scale and speed tests.
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from rcnn.data.feeders import make_feeder
from rcnn.data.regions import RegionSet
from rcnn.data.sampler import BalancedBatchSampler
from rcnn.errors import ConfigError
from rcnn.modeling.model import ModelSpec, build_model
from rcnn.runtime.allocator import reuse_freed_memory
from rcnn.runtime.device import autocast, configure_device, resolve_device
from rcnn.training.config import TrainConfig
from rcnn.training.run import for_device, make_optimizer

logger = logging.getLogger(__name__)


def make_scale_regions(
    out: str | Path,
    images: int = 376,
    regions_per_image: int = 1400,
    image_size: tuple[int, int] = (500, 375),
    seed: int = 0,
) -> Path:
    """Writes ``images`` random JPEGs and a region store of random boxes (25% positive).

    The defaults match the recipe's training split: 376 images and about 530k regions.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = image_size
    paths = []
    for i in range(images):
        image = cv2.GaussianBlur(
            rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (5, 5), 0
        )
        path = out / "images" / f"{i:06d}.jpg"
        cv2.imwrite(str(path), image)
        paths.append(str(path.resolve()))
    n = images * regions_per_image
    x1 = rng.integers(0, width - 16, n)
    y1 = rng.integers(0, height - 16, n)
    x2 = np.minimum(width, x1 + rng.integers(16, width // 2, n))
    y2 = np.minimum(height, y1 + rng.integers(16, height // 2, n))
    labels = (rng.random(n) < 0.25).astype(np.int16)
    regions = RegionSet(
        paths,
        np.repeat(np.arange(images), regions_per_image),
        np.stack([x1, y1, x2, y2], axis=1),
        labels,
        rng.random(n),
        ["car"],
        [image_size] * images,
        {"synthetic": True},
    )
    for split in ("train", "val"):
        regions.save(out / split)
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process and of its finished children (workers), in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((own + children) / 1024, 1)


def _feeder(cfg: TrainConfig, regions: RegionSet, device, batches: int):
    sampler = BalancedBatchSampler(regions.labels, cfg.num_pos, cfg.num_neg, cfg.seed)
    warp = ModelSpec.of(cfg).warp()
    start = time.perf_counter()
    feeder = make_feeder(regions, sampler, warp, device, cfg.pipeline, cfg.workers)
    setup = time.perf_counter() - start
    if len(sampler) < batches:
        raise ConfigError(f"--batches {batches}: the data makes only {len(sampler)} batches")
    return feeder, setup


def time_batches(feeder, device, batches: int, warmup: int, step=None) -> tuple[int, float]:
    """Regions and seconds over ``batches`` batches after ``warmup`` untimed ones."""
    count, start = 0, None
    for i, (images, labels) in enumerate(feeder):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        if step is not None:
            step(images, labels)
        if i >= warmup:
            count += len(labels)
        if i + 1 == batches + warmup:
            break
    _sync(device)
    return count, time.perf_counter() - start


def bench_loader(cfg: TrainConfig, batches: int = 20, warmup: int = 3) -> dict:
    """Regions per second of the training input pipeline: warped, flipped, normalized batches
    on the device, as the training loop receives them."""
    device = resolve_device(cfg.device)
    regions = RegionSet.load(Path(cfg.data) / "train")
    feeder, setup = _feeder(cfg, regions, device, batches + warmup)
    flips = torch.Generator().manual_seed(0)
    with reuse_freed_memory(enabled=device.type == "cpu"):
        count, elapsed = time_batches(feeder.iterate(flips), device, batches, warmup)
    return {
        "pipeline": type(feeder).__name__,
        "device": str(device),
        "regions": count,
        "regions_per_s": round(count / elapsed, 1),
        "setup_s": round(setup, 2),
        "peak_rss_mb": peak_rss_mb(),
    }


def bench_train(cfg: TrainConfig, batches: int = 10, warmup: int = 2) -> dict:
    """Regions per second of full training steps (input, forward, backward, optimizer step),
    set up as `rcnn train` sets them up: ``cfg``'s layout and precision, the fused optimizer,
    freed memory kept for the next step."""
    device = resolve_device(cfg.device)
    configure_device(device)
    cfg = for_device(cfg, device)
    regions = RegionSet.load(Path(cfg.data) / "train")
    feeder, setup = _feeder(cfg, regions, device, batches + warmup)
    model = build_model(cfg.backbone, len(regions.classes) + 1, cfg.weights)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer, _ = make_optimizer(cfg, model)
    flips = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(images, labels):
        with autocast(device, cfg.amp):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with reuse_freed_memory(enabled=device.type == "cpu"):
        count, elapsed = time_batches(feeder.iterate(flips), device, batches, warmup, step)
    result = {
        "pipeline": type(feeder).__name__,
        "device": str(device),
        "amp": cfg.amp,
        "channels_last": cfg.channels_last,
        "regions": count,
        "regions_per_s": round(count / elapsed, 1),
        "peak_rss_mb": peak_rss_mb(),
    }
    if device.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # timings must include the queued GPU work
