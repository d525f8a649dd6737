"""The project's input pipeline and training steps, side by side with the naive pipeline.

The naive pipeline is a faithful re-implementation of what public R-CNN fine-tuning code does
(and what the recipe's reference implementation does): every image decoded as a BGR array,
then per region a linear search over cumulative per-image counts to find its image, a crop,
``ToPILImage -> Resize((227, 227)) -> RandomHorizontalFlip -> ToTensor -> Normalize(0.5, 0.5)``
in DataLoader workers, and a plain fp32 training loop. Both run in this one process on the
same regions and the same number of workers, so the ratios are measured side by side.

    python benchmarks/bench_pipeline.py                      # a recipe-scale synthetic set
    python benchmarks/bench_pipeline.py --data OUT           # a `rcnn prepare` output
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from rcnn.bench import bench_loader, bench_train, make_scale_regions, peak_rss_mb, time_batches
from rcnn.data.regions import RegionSet
from rcnn.data.sampler import BalancedBatchSampler
from rcnn.modeling.model import build_model
from rcnn.training.config import TrainConfig


class NaiveRegionDataset(Dataset):
    """Per-region crop and PIL transforms, with a linear search for each region's image."""

    def __init__(self, regions: RegionSet, size: int = 227):
        self.images = [cv2.imread(p) for p in regions.image_paths]  # BGR, as the reference
        order = np.argsort(regions.image_index, kind="stable")
        self.boxes, self.labels = regions.boxes[order], regions.labels[order]
        self.counts = np.bincount(regions.image_index, minlength=len(self.images)).tolist()
        self.transform = transforms.Compose(
            [
                transforms.ToPILImage(),
                transforms.Resize((size, size)),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image_id, start = 0, 0
        while index >= start + self.counts[image_id]:  # the reference's per-sample search
            start += self.counts[image_id]
            image_id += 1
        x1, y1, x2, y2 = self.boxes[index]
        return self.transform(self.images[image_id][y1:y2, x1:x2]), int(self.labels[index])


def naive_loader(regions: RegionSet, workers: int, size: int) -> DataLoader:
    dataset = NaiveRegionDataset(regions, size)
    sampler = BalancedBatchSampler(dataset.labels, 32, 96, seed=0)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers)


def time_naive(loader: DataLoader, batches: int, warmup: int, step=None) -> float:
    """Regions per second over ``batches`` batches after ``warmup`` batches."""
    count, seconds = time_batches(loader, torch.device("cpu"), batches, warmup, step)
    return round(count / seconds, 1)


def naive_train_step(model, optimizer):
    def step(images, labels):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="`rcnn prepare` output; default: synthesize one")
    parser.add_argument("--images", type=int, default=376, help="synthetic images")
    parser.add_argument("--regions-per-image", type=int, default=1400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20, help="timed loader batches")
    parser.add_argument("--train-batches", type=int, default=6, help="timed training steps")
    parser.add_argument("--input-size", type=int, default=227)
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternate naive and ours this often; keep the best"
    )
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument(
        "--variants", action="store_true", help="also time the other input paths and layouts"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(
            make_scale_regions(Path(tmp) / "scale", args.images, args.regions_per_image)
        )
        regions = RegionSet.load(Path(data) / "train")
        cfg = TrainConfig(
            data=data,
            weights="none",
            workers=args.workers,
            device="cpu",
            input_size=args.input_size,
            pipeline="threads",
            progress=False,
        )
        report = {
            "images": len(regions.image_paths),
            "regions": len(regions),
            "workers": args.workers,
            "input_size": args.input_size,
            "loader": loader_side_by_side(cfg, regions, args),
        }
        if not args.skip_train:
            report["train"] = train_side_by_side(cfg, regions, args)
        report["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(report, indent=2))


def loader_side_by_side(cfg: TrainConfig, regions: RegionSet, args) -> dict:
    naive, ours = [], []
    for _ in range(args.repeats):
        loader = naive_loader(regions, args.workers, args.input_size)
        naive.append(time_naive(loader, args.batches, 2))
        ours.append(bench_loader(cfg, batches=args.batches)["regions_per_s"])
    result = {"naive_regions_per_s": max(naive), "rcnn_regions_per_s": max(ours)}
    result["ratio"] = round(max(ours) / max(naive), 2)
    if args.variants:
        for pipeline in ("loader", "device"):
            run = bench_loader(replace(cfg, pipeline=pipeline), batches=args.batches)
            result[f"rcnn_{pipeline}_path_regions_per_s"] = run["regions_per_s"]
    return result


def train_side_by_side(cfg: TrainConfig, regions: RegionSet, args) -> dict:
    """`rcnn train`'s steps (channels_last, fused SGD, recycled memory) against a plain
    fp32 loop over the naive loader."""
    naive, ours = [], []
    for _ in range(args.repeats):
        torch.manual_seed(0)
        model = build_model("alexnet", 2, "none")
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        loader = naive_loader(regions, args.workers, args.input_size)
        step = naive_train_step(model, optimizer)
        naive.append(time_naive(loader, args.train_batches, 1, step))
        ours.append(bench_train(cfg, args.train_batches, 1)["regions_per_s"])
    result = {"naive_fp32_regions_per_s": max(naive), "rcnn_regions_per_s": max(ours)}
    result["ratio"] = round(max(ours) / max(naive), 2)
    if args.variants:
        for name, variant in [
            ("fp32_nchw", replace(cfg, channels_last=False)),
            ("bf16", replace(cfg, amp=True)),
        ]:
            run = bench_train(variant, args.train_batches, 1)
            result[f"rcnn_{name}_regions_per_s"] = run["regions_per_s"]
    return result


if __name__ == "__main__":
    main()
