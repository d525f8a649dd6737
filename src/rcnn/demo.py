"""``rcnn demo``: the whole pipeline, offline, on a synthetic VOC-format dataset.

synth -> prepare (fast Selective Search) -> train -> evaluate -> detect and score the test
split by the VOC devkit's rules -> figures of predictions and detections.
Sized to finish in a few minutes on a 2-core CPU; on a GPU it is faster still.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rcnn.data.labels import PRESETS as LABEL_PRESETS
from rcnn.data.prepare import PrepareConfig, run_prepare
from rcnn.data.proposals import ProposalConfig
from rcnn.data.synth import make_synthetic_voc
from rcnn.detection.config import eval_detector_config
from rcnn.detection.voc_test import VOCTestConfig, run_test
from rcnn.errors import ConfigError, RcnnError
from rcnn.evaluation.evaluate import run_evaluate
from rcnn.modeling.model import imagenet_weights_cached
from rcnn.training.train import TrainConfig, minutes_seconds, run_train

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    out: str = "rcnn-demo"
    images: int = 90  # a third each for train, val and test
    image_size: tuple[int, int] = (256, 192)
    epochs: int = 3
    input_size: int = 112  # smaller than the recipe's 227 so that CPU training takes minutes
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    progress: bool = True

    def __post_init__(self):
        if self.images < 9:
            raise ConfigError(
                f"--images must be >= 9 for a train, a val and a test split, got {self.images}"
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
        make_synthetic_voc(voc, cfg.images, cfg.seed, cfg.image_size, 1 / 3, 1 / 3)
    elif not (voc / "ImageSets" / "Main" / "test.txt").is_file():
        raise RcnnError(
            f"{voc} has no test split (an older demo's?); delete it or use another --out"
        )
    print(f"[1/5] synthetic VOC dataset: {voc}")
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
            f"[2/5] {split}: {s['images']} images, {s['proposals']} proposals -> "
            f"{s['positives']} positives, {s['negatives']} negatives"
        )
    cached = imagenet_weights_cached("alexnet")
    weights = "imagenet" if cached else "none"
    print(
        "[3/5] fine-tuning AlexNet from "
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
    print("[4/5] evaluation of the best checkpoint on all validation regions:")
    print(metrics["report"])
    test = run_test(
        VOCTestConfig(
            train_cfg.out,
            str(voc),
            str(out / "test"),
            detector=eval_detector_config(device=cfg.device, cache_dir=str(out / "cache")),
            overwrite=True,
            progress=cfg.progress,
        )
    )
    figure = out / "test" / "detections.png"
    draw_test_images(voc, out / "test", train_cfg.out, figure)
    print("[5/5] detection on the test split (VOC AP by the devkit's rules):")
    print(test["report"])
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
        ("detection AP", out / "test" / "metrics.json"),
        ("result files", out / "test" / "comp4_det_test_car.txt"),
        ("detections", figure),
    ]:
        print(f"  {label:<13}{path}")
    return {**metrics, "test": test, "seconds": round(elapsed, 1)}


def draw_test_images(voc: Path, test: Path, run: str, path: Path, count: int = 6) -> None:
    """A few test images with their ground truth (green) and the detections scoring at least
    the reference detector's 0.6 (in the class colour)."""
    from rcnn.data.voc import VOCDataset, parse_annotation, read_id_file
    from rcnn.detection.detector import Detections
    from rcnn.detection.draw import GROUND_TRUTH_COLOR, draw_boxes, draw_detections
    from rcnn.evaluation.plots import plot_images

    dataset = VOCDataset(voc)
    classes = json.loads((test / "settings.json").read_text())["classes"]
    images, titles = [], []
    for image_id in read_id_file(dataset.split_path("test"))[:count]:
        image = cv2.imread(str(dataset.image_path(image_id)))
        truth = [o.box for o in parse_annotation(dataset.annotation_path(image_id)).objects]
        image = draw_boxes(image, np.array(truth).reshape(-1, 4), [""] * len(truth),
                           [GROUND_TRUTH_COLOR] * len(truth))  # fmt: skip
        with np.load(test / "detections" / f"{image_id}.npz") as data:
            keep = data["scores"] >= 0.6
            dets = Detections(data["boxes"][keep], data["scores"][keep], data["labels"][keep])
        image = draw_detections(image, dets, classes)
        images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        titles.append(f"{image_id}: {len(truth)} objects (green), {len(dets)} detections")
    plot_images(images, titles, path)
