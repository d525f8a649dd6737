"""Projected wall time of the recipe (25 epochs, ~530k train + ~480k val regions) on one device.

Times full training steps and validation batches of the project's default pipeline for the
device on a synthetic region set of the recipe's scale, then projects:
epochs x (train regions / train rate + val regions / val rate).

    python benchmarks/bench_recipe_time.py --device cuda --amp       # on a GPU machine
    python benchmarks/bench_recipe_time.py --device cpu --images 8 --regions-per-image 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from rcnn.bench import bench_train, make_scale_regions, peak_rss_mb, time_batches
from rcnn.data.feeders import chunks, make_feeder
from rcnn.data.regions import RegionSet
from rcnn.modeling.model import ModelSpec, build_model
from rcnn.runtime.allocator import reuse_freed_memory
from rcnn.runtime.device import autocast, configure_device, resolve_device
from rcnn.training.config import TrainConfig
from rcnn.training.run import for_device

RECIPE_TRAIN_REGIONS, RECIPE_VAL_REGIONS, RECIPE_EPOCHS = 530_000, 480_000, 25


def val_rate(cfg: TrainConfig, batches: int) -> float:
    """Regions per second of validation: warp, forward, softmax, no gradients."""
    device = resolve_device(cfg.device)
    configure_device(device)
    cfg = for_device(cfg, device)
    regions = RegionSet.load(Path(cfg.data) / "val")
    order = chunks(np.arange(len(regions)), cfg.val_batch)
    feeder = make_feeder(regions, order, ModelSpec.of(cfg).warp(), device, cfg.pipeline,
                         cfg.workers)  # fmt: skip
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_model(cfg.backbone, 2, "none").to(device, memory_format=memory_format).eval()

    @torch.no_grad()
    def step(images, labels):
        with autocast(device, cfg.amp):
            model(images).float().softmax(1)

    with reuse_freed_memory(enabled=device.type == "cpu"):
        count, seconds = time_batches(feeder, device, batches, 2, step)
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        help="bfloat16 autocast (default: on CUDA GPUs with bfloat16)",
    )
    parser.add_argument("--images", type=int, default=376)
    parser.add_argument("--regions-per-image", type=int, default=1400)
    parser.add_argument("--train-batches", type=int, default=40)
    parser.add_argument("--val-batches", type=int, default=40)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core (CPU paths)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = make_scale_regions(Path(tmp) / "scale", args.images, args.regions_per_image)
        cfg = TrainConfig(
            data=str(data),
            weights="none",
            device=args.device,
            amp=args.amp,
            workers=args.workers,
            progress=False,
        )
        train = bench_train(cfg, args.train_batches, 2)
        val = val_rate(cfg, args.val_batches)
    seconds = RECIPE_EPOCHS * (
        RECIPE_TRAIN_REGIONS / train["regions_per_s"] + RECIPE_VAL_REGIONS / val
    )
    device = resolve_device(args.device)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "pipeline": train["pipeline"],
        "amp": train["amp"],
        "train_regions_per_s": train["regions_per_s"],
        "val_regions_per_s": round(val, 1),
        "projected_recipe_minutes": round(seconds / 60, 1),
        "peak_gpu_mb": train.get("peak_gpu_mb"),
        "peak_rss_mb": peak_rss_mb(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
