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

from rcnn.errors import ConfigError, RcnnError
from rcnn.progress import minutes_seconds
from rcnn.runtime.config import InferenceConfig
from rcnn.training.config import TrainConfig

# The stages are imported where they run: `rcnn --help` reads DemoConfig without torch.
logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    out: str = "rcnn-demo"
    classes: tuple[str, ...] = ("car", "bus")  # synthetic classes (rcnn.data.shapes)
    images: int = 84  # a third each for train, val and test
    image_size: tuple[int, int] = (256, 192)
    epochs: int = 3
    input_size: int = 80  # smaller than the recipe's 227 so that CPU training takes minutes
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
    from rcnn.data.synth import make_synthetic_voc
    from rcnn.detection.ablate import AblationConfig, run_ablation
    from rcnn.detection.config import eval_detector_config
    from rcnn.detection.testing import TestConfig
    from rcnn.evaluation.evaluate import run_evaluate
    from rcnn.modeling.model import imagenet_weights_cached
    from rcnn.training.train import run_train

    out = Path(cfg.out)
    start = time.time()
    voc = out / "voc"
    if not (voc / "Annotations").is_dir():
        make_synthetic_voc(voc, cfg.images, cfg.seed, cfg.image_size, 1 / 3, 1 / 3, cfg.classes)
    main = voc / "ImageSets" / "Main"
    lacking = [f"{c}_test.txt" for c in cfg.classes if not (main / f"{c}_test.txt").is_file()]
    if lacking:
        raise RcnnError(
            f"{voc} has no {', '.join(lacking)} (an older demo's data, or other --classes?); "
            "delete it or use another --out"
        )
    print(f"[1/6] synthetic VOC dataset of {', '.join(cfg.classes)}: {voc}")
    prepared = _prepare(cfg, voc, out / "regions", "seed", ["train", "val"])
    for split, s in prepared["splits"].items():
        print(
            f"[2/6] {split}: {s['images']} images, {s['proposals']} proposals -> "
            f"{s['positives']} positives, {s['negatives']} negatives"
        )
    cached = imagenet_weights_cached("alexnet")
    weights = "imagenet" if cached else "none"
    print(
        "[3/6] fine-tuning AlexNet from "
        + (
            "ImageNet weights (found in the torch cache)"
            if cached
            else "random initialisation (no ImageNet weights in the torch cache; run "
            "`rcnn train --weights imagenet` once online to fetch them)"
        )
    )
    train_cfg = demo_train_config(cfg, weights)
    run_train(train_cfg, overwrite=True)  # the demo's own folder: a re-run replaces its run
    inference = InferenceConfig(device=cfg.device, threads=cfg.workers)
    metrics = run_evaluate(
        train_cfg.out, str(out / "regions"), "val", inference=inference, progress=cfg.progress
    )
    print("[4/6] evaluation of the best checkpoint on all validation regions:")
    print(metrics["report"])
    stages = train_heads(cfg, voc, out, train_cfg.out)
    ablation_start = time.time()
    test = TestConfig(
        train_cfg.out,
        str(voc),
        str(out / "test"),
        detector=eval_detector_config(inference=inference, cache_dir=str(out / "cache")),
        overwrite=True,
        progress=cfg.progress,
    )
    ablation = run_ablation(
        AblationConfig(test, str(out / "regions-paper"), "train", bbox_reg=train_cfg.out + "/bbox")
    )
    stages["ablation"] = round(time.time() - ablation_start, 1)
    softmax = ablation["rows"]["fine-tuned/softmax"]
    figure = out / "test" / "detections.png"
    draw_test_images(voc, out / "test" / "fine-tuned" / "softmax", figure)
    print("[6/6] detection on the test split (VOC AP by the devkit's rules), fine-tuned softmax:")
    print(softmax["report"])
    print(
        f"R-CNN's ablation (Table 2 of the paper) on the test split, AP (VOC2007 11-point), "
        f"{stages['ablation']} s:"
    )
    print(ablation["table"])
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
        ("SVMs", run / "svm"),
        ("box regressors", run / "bbox"),
        ("detection AP", out / "test" / "fine-tuned" / "softmax" / "metrics.json"),
        ("result files", out / "test" / "fine-tuned" / "softmax" / "comp4_det_test_car.txt"),
        ("ablation", out / "test" / "ablation.md"),
        ("detections", figure),
    ]:
        print(f"  {label:<15}{path}")
    seconds = {**stages, "total": round(elapsed, 1)}
    return {**metrics, "test": softmax, "ablation": ablation, "seconds": seconds}


def _prepare(cfg: DemoConfig, voc: Path, out: Path, preset: str, splits: list[str]) -> dict:
    from rcnn.data.config import PrepareConfig, ProposalConfig
    from rcnn.data.labels import PRESETS as LABEL_PRESETS
    from rcnn.data.prepare import run_prepare

    return run_prepare(
        PrepareConfig(
            str(voc),
            str(out),
            splits=splits,
            classes=list(cfg.classes),
            labels=LABEL_PRESETS[preset],
            proposals=ProposalConfig("fast"),
            workers=0,
            cache_dir=str(Path(cfg.out) / "cache"),
            progress=cfg.progress,
        )
    )


def train_heads(cfg: DemoConfig, voc: Path, out: Path, run: str) -> dict:
    """R-CNN's SVMs and box regressors on the training split, their features computed on the
    fly (no feature store); returns each stage's seconds."""
    from rcnn.heads.config import BBoxConfig, HeadConfig, SVMConfig
    from rcnn.heads.train import run_train_bbox, run_train_svm

    times = {}
    start = time.time()
    prepared = _prepare(cfg, voc, out / "regions-paper", "paper", ["train"])  # + the GT boxes
    inference = InferenceConfig(device=cfg.device)
    heads = HeadConfig(model=run, data=str(out / "regions-paper"), inference=inference,
                       progress=cfg.progress)  # fmt: skip
    times["prepare_paper"] = round(time.time() - start, 1)
    svm = run_train_svm(heads, SVMConfig())
    times["train_svm"] = svm["seconds"]
    bbox = run_train_bbox(heads, BBoxConfig())
    times["train_bbox"] = bbox["seconds"]
    last = {row["class"]: row for row in svm["log"]}
    cached = ", ".join(f"{c}: {r['negatives_in_cache']}" for c, r in last.items())
    examples = ", ".join(f"{r['examples']} {r['class']}" for r in bbox["log"])
    print(
        f"[5/6] R-CNN's heads on {prepared['splits']['train']['regions']} training regions, "
        f"their features computed on the fly (no feature store): SVMs after one pass of "
        f"hard-negative mining (negatives cached: {cached}; {times['train_svm']} s), box "
        f"regressors on {examples} regions ({times['train_bbox']} s)"
    )
    return times


def draw_test_images(voc: Path, test: Path, path: Path, count: int = 6) -> None:
    """A few test images with their ground truth (green) and the detections scoring at least
    the reference detector's 0.6 (in the class colour)."""
    import cv2
    import numpy as np

    from rcnn.data.images import read_image
    from rcnn.data.voc import VOCDataset, parse_annotation, read_id_file
    from rcnn.detection.detector import Detections
    from rcnn.detection.draw import GROUND_TRUTH_COLOR, draw_boxes, draw_detections
    from rcnn.detection.image_results import read_image_detections
    from rcnn.evaluation.plots import plot_images

    dataset = VOCDataset(voc)
    classes = json.loads((test / "settings.json").read_text())["classes"]
    images, titles = [], []
    for image_id in read_id_file(dataset.split_path("test"))[:count]:
        image = read_image(dataset.image_path(image_id))
        truth = [o.box for o in parse_annotation(dataset.annotation_path(image_id)).objects]
        image = draw_boxes(image, np.array(truth).reshape(-1, 4), [""] * len(truth),
                           [GROUND_TRUTH_COLOR] * len(truth))  # fmt: skip
        data = read_image_detections(test / "detections" / f"{image_id}.npz")
        keep = data["scores"] >= 0.6
        dets = Detections(data["boxes"][keep], data["scores"][keep], data["labels"][keep])
        image = draw_detections(image, dets, classes)
        images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        titles.append(f"{image_id}: {len(truth)} objects (green), {len(dets)} detections")
    plot_images(images, titles, path)
