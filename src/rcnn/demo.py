"""``rcnn demo``: synthetic VOC-format scenes, then ``rcnn pipeline`` on them, offline.

synth -> rcnn pipeline (prepare, fine-tune, evaluate, SVMs and box regressors, the paper's
Table 2 on the test split, report.md) -> a figure of test images with their detections.
Sized to finish in a few minutes on a 2-core CPU; on a GPU it is faster still. A re-run goes
on where the last one stopped, and does nothing once it is complete.
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


def demo_pipeline(cfg: DemoConfig, weights: str):
    """The pipeline's settings for the demo: the recipe's batches and schedule with Adam at
    1e-4 (the recipe's third remedy, which also learns quickly from random initialisation
    when no ImageNet weights are at hand) on the recipe's regions; the SVMs on trainval."""
    from rcnn.pipeline.config import PipelineConfig

    out = Path(cfg.out)
    inference = InferenceConfig(device=cfg.device, threads=cfg.workers)
    return PipelineConfig(
        out=str(out),
        voc_root=str(out / "voc"),
        classes=list(cfg.classes),
        preset="adam",
        train={
            "weights": weights,
            "epochs": cfg.epochs,
            "input_size": cfg.input_size,
            "seed": cfg.seed,
        },  # fmt: skip
        inference=inference,
        cache_dir=str(out / "cache"),
        progress=cfg.progress,
    )


def run_demo(cfg: DemoConfig) -> dict:
    from rcnn.data.synth import make_synthetic_voc
    from rcnn.modeling.model import imagenet_weights_cached
    from rcnn.pipeline.run import run_pipeline

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
    print(f"synthetic VOC dataset of {', '.join(cfg.classes)}: {voc}")
    cached = imagenet_weights_cached("alexnet")
    print(
        "fine-tuning AlexNet from "
        + (
            "ImageNet weights (found in the torch cache)"
            if cached
            else "random initialisation (no ImageNet weights in the torch cache; run "
            "`rcnn train --weights imagenet` once online to fetch them)"
        )
    )
    found = run_pipeline(demo_pipeline(cfg, "imagenet" if cached else "none"))
    ablation = out / "ablation"
    figure = ablation / "detections.png"
    draw_test_images(voc, ablation / "fine-tuned" / "softmax", figure)
    explained = explain_test_image(cfg, voc, out)
    table = (ablation / "ablation.md").read_text().strip()
    final = json.loads((ablation / "fine-tuned" / "fc7-bbox" / "metrics.json").read_text())
    regions = json.loads((out / "evaluate" / "metrics.json").read_text())
    print("\nR-CNN's ablation (Table 2 of the paper) on the test split, AP (VOC2007 11-point):")
    print(table)
    elapsed = time.time() - start
    print(f"\nDemo finished in {minutes_seconds(elapsed)} (stages run: "
          f"{', '.join(found['ran']) or 'none, all up to date'}). Files:")  # fmt: skip
    run = out / "run"
    for label, path in [
        ("report", out / "report.md"),
        ("dataset", voc),
        ("training log", run / "metrics.csv"),
        ("curves", run / "curves.png"),
        ("best weights", run / "model.pth"),
        ("region metrics", out / "evaluate" / "metrics.json"),
        ("SVMs", run / "svm"),
        ("box regressors", run / "bbox"),
        ("ablation", ablation / "ablation.md"),
        ("detections", figure),
        ("one image", explained / "explain.png"),
    ]:
        print(f"  {label:<15}{path}")
    seconds = {name: r["seconds"] for name, r in found["stages"].items() if r}
    return {"regions": regions, "test": final, "table": table, "ran": found["ran"],
            "seconds": {**seconds, "total": round(elapsed, 1)}}  # fmt: skip


def explain_test_image(cfg: DemoConfig, voc: Path, out: Path) -> Path:
    """`rcnn explain` of the first test image by the final detector (SVMs on fc7 and box
    regression) into OUT/explain, and a section of report.md that shows it."""
    from rcnn.detection.config import DetectorConfig
    from rcnn.detection.explain_report import run_explain
    from rcnn.files import atomic_write_bytes

    image_id = (voc / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    run, folder = out / "run", out / "explain"
    inference = InferenceConfig(device=cfg.device, threads=cfg.workers)
    detector = DetectorConfig(scorer="svm", bbox_reg=str(run / "bbox"),
                              cache_dir=str(out / "cache"), inference=inference,
                              workers=cfg.workers)  # fmt: skip
    found = run_explain(str(run), str(voc / "JPEGImages" / f"{image_id}.jpg"), str(folder),
                        detector, str(voc / "Annotations" / f"{image_id}.xml"),
                        overwrite=True)  # fmt: skip
    report = out / "report.md"
    if report.is_file():
        section = (
            f"\n## One test image's trip through the detector\n\n`rcnn explain` of test image "
            f"{image_id}: {found['proposals']} proposals, {found['candidates']} scoring at least "
            f"the threshold, {found['detections']} kept by NMS (numbers in "
            f"[explain/explain.md](explain/explain.md)).\n\n![one image's trip]"
            "(explain/explain.png)\n"
        )
        # An up-to-date pipeline leaves its report as it was: the section is replaced, not added.
        text = report.read_text().split("\n## One test image's trip")[0].rstrip()
        atomic_write_bytes(report, (text + "\n" + section).encode())
    return folder


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
