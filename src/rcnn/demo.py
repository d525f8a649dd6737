"""``rcnn demo``: the whole pipeline, offline, on a synthetic VOC-format dataset.

synth -> prepare (fast Selective Search) -> train -> evaluate -> a figure of predictions.
Sized to finish in a few minutes on a 2-core CPU; on a GPU it is faster still.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from rcnn.data.labels import PRESETS as LABEL_PRESETS
from rcnn.data.prepare import PrepareConfig, run_prepare
from rcnn.data.proposals import ProposalConfig
from rcnn.data.synth import make_synthetic_voc
from rcnn.errors import ConfigError
from rcnn.evaluation.evaluate import run_evaluate
from rcnn.modeling.model import imagenet_weights_cached
from rcnn.training.train import TrainConfig, minutes_seconds, run_train

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    out: str = "rcnn-demo"
    images: int = 60
    image_size: tuple[int, int] = (256, 192)
    epochs: int = 3
    input_size: int = 112  # smaller than the recipe's 227 so that CPU training takes minutes
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    progress: bool = True

    def __post_init__(self):
        if self.images < 8:
            raise ConfigError(
                f"--images must be >= 8 for a train and a val split, got {self.images}"
            )


def demo_train_config(cfg: DemoConfig, weights: str) -> TrainConfig:
    """The recipe's batches and schedule, with Adam at 1e-4 (the recipe's third remedy), which
    also learns quickly from random initialisation when no ImageNet weights are at hand."""
    out = Path(cfg.out)
    return TrainConfig(
        data=str(out / "regions"),
        out=str(out / "run"),
        weights=weights,
        epochs=cfg.epochs,
        optimizer="adam",
        lr=1e-4,
        input_size=cfg.input_size,
        workers=cfg.workers,
        device=cfg.device,
        seed=cfg.seed,
        progress=cfg.progress,
    )


def run_demo(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    start = time.time()
    voc = out / "voc"
    if not (voc / "Annotations").is_dir():
        make_synthetic_voc(voc, cfg.images, cfg.seed, cfg.image_size)
    print(f"[1/4] synthetic VOC dataset: {voc}")
    prepared = run_prepare(
        PrepareConfig(
            str(voc),
            str(out / "regions"),
            labels=LABEL_PRESETS["seed"],
            proposals=ProposalConfig("fast"),
            workers=0,
            cache_dir=str(out / "cache"),
            progress=cfg.progress,
        )
    )
    for split, s in prepared["splits"].items():
        print(
            f"[2/4] {split}: {s['images']} images, {s['proposals']} proposals -> "
            f"{s['positives']} positives, {s['negatives']} negatives"
        )
    cached = imagenet_weights_cached("alexnet")
    weights = "imagenet" if cached else "none"
    print(
        "[3/4] fine-tuning AlexNet from "
        + (
            "ImageNet weights (found in the torch cache)"
            if cached
            else "random initialisation (no ImageNet weights in the torch cache; run "
            "`rcnn train --weights imagenet` once online to fetch them)"
        )
    )
    train_cfg = demo_train_config(cfg, weights)
    run_train(train_cfg, overwrite=True)  # the demo's own folder: a re-run replaces its run
    metrics = run_evaluate(
        train_cfg.out,
        str(out / "regions"),
        "val",
        device=cfg.device,
        workers=cfg.workers,
        progress=cfg.progress,
    )
    print("[4/4] evaluation of the best checkpoint on all validation regions:")
    print(metrics["report"])
    elapsed = time.time() - start
    print(f"\nDemo finished in {minutes_seconds(elapsed)}. Files:")
    run = Path(train_cfg.out)
    for label, path in [
        ("dataset", voc),
        ("regions", out / "regions"),
        ("training log", run / "metrics.csv"),
        ("curves", run / "curves.png"),
        ("best weights", run / "model.pth"),
        ("metrics", Path(metrics["out"]) / "metrics.json"),
        ("PR curve", Path(metrics["out"]) / "pr.png"),
        ("predictions", Path(metrics["out"]) / "examples.png"),
    ]:
        print(f"  {label:<13}{path}")
    return {**metrics, "seconds": round(elapsed, 1)}
