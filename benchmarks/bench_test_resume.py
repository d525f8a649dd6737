"""`rcnn test` resumed when every image is already done: how long until the metrics?

Builds a synthetic VOC split of VOC2007 test's size (4,952 images by default), a
random-initialised AlexNet checkpoint, runs `rcnn test` on one image to write the settings,
then fills in every other image's per-image detections file (``--per-image`` random
detections an image and class, as the detector would leave them, with the digest of the
image and its annotation) and times the real command twice, process start included. Nothing
is detected: the first run checks the inputs, reads the saved detections, writes the result
files and scores them; the second finds that run finished on the same inputs and keeps its
metrics. The time Python takes to import torch and torchvision, which every run pays, is
printed too.

    python benchmarks/bench_test_resume.py                 # 4,952 images, 1 class
    python benchmarks/bench_test_resume.py --classes 20 --images 1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4952)
    parser.add_argument("--classes", type=int, default=1, help="classes named c1, c2, ...")
    parser.add_argument("--per-image", type=int, default=100, help="detections an image, class")
    parser.add_argument("--work", help="folder to keep (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        print(json.dumps(run(work, args.images, args.classes, args.per_image), indent=2))


def run(work: Path, images: int, num_classes: int, per_image: int) -> dict:
    import torch

    from rcnn.data.proposals import ProposalResult
    from rcnn.data.synth import make_synthetic_voc
    from rcnn.data.voc import VOCDataset, read_id_file
    from rcnn.detection.detector import Detections
    from rcnn.detection.image_results import input_digest, save_image_detections
    from rcnn.evaluation.detection_metrics import load_ground_truth
    from rcnn.modeling.model import build_model
    from rcnn.training.config import TrainConfig

    start = time.perf_counter()
    voc_root = work / "voc"
    if not (voc_root / "Annotations").is_dir():
        make_synthetic_voc(voc_root, images, seed=0, image_size=(128, 96))
    classes = ["car"] + [f"c{k}" for k in range(2, num_classes + 1)]
    main_dir = voc_root / "ImageSets" / "Main"
    ids = sorted(read_id_file(main_dir / "train.txt") + read_id_file(main_dir / "val.txt"))
    run_dir = work / "run"
    run_dir.mkdir(exist_ok=True)
    model = build_model("alexnet", len(classes) + 1, "none")
    config = asdict(TrainConfig(input_size=64, weights="none"))
    torch.save({"format": "rcnn-checkpoint", "epoch": 1, "config": config,
                "classes": ["background", *classes], "model": model.state_dict(),
                "optimizer": {}, "scheduler": {}, "history": [], "best": None},
               run_dir / "best.pt")  # fmt: skip
    setup = time.perf_counter() - start
    out = work / "test"
    argv = [sys.executable, "-m", "rcnn", "test", str(run_dir), "--voc-root", str(voc_root),
            "--out", str(out), "--device", "cpu", "--workers", "1", "--no-progress",
            "--cache-dir", str(work / "cache"), "--classes", *classes]  # fmt: skip
    # One image detected for real: the settings of the run and the first file.
    (main_dir / "test.txt").write_text(f"{ids[0]}\n")
    subprocess.run(argv, check=True, capture_output=True)
    (main_dir / "test.txt").write_text("".join(f"{i}\n" for i in ids))
    voc = VOCDataset(voc_root)
    truth = load_ground_truth(voc, ids, classes)
    rng = np.random.default_rng(0)
    n = per_image * len(classes)
    for image_id in ids[1:]:
        xy = rng.uniform(0, 100, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 60, (n, 2))], axis=1).astype(np.float32)
        labels = np.repeat(np.arange(1, len(classes) + 1), per_image)
        dets = Detections(boxes, rng.random(n).astype(np.float32), labels)
        result = ProposalResult(str(voc.image_path(image_id)), None)
        save_image_detections(
            out / "detections" / f"{image_id}.npz",
            result,
            dets,
            truth.objects[image_id],
            input_digest(voc, image_id),
        )
    fill = time.perf_counter() - start - setup
    before = {p: p.stat().st_mtime_ns for p in (out / "detections").iterdir()}
    timed = []
    for _ in range(2):
        begin = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        timed.append(round(time.perf_counter() - begin, 2))
        if done.returncode != 0:
            raise SystemExit(done.stderr)
    if any(p.stat().st_mtime_ns != t for p, t in before.items()):
        raise SystemExit("the resume detected images again: not a no-op resume")
    metrics = json.loads((out / "metrics.json").read_text())
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, torchvision.models"], check=True)
    imports = round(time.perf_counter() - begin, 2)
    return {
        "images": len(ids),
        "classes": len(classes),
        "detections": sum(c["detections"] for c in metrics["classes"].values()),
        # The first reads every image's detections and scores them; the second finds the
        # run finished on the same inputs and keeps its metrics.
        "first_resume_s": timed[0],
        "no_op_resume_s": timed[1],
        "import_torch_and_torchvision_s": imports,
        "setup_s": round(setup, 1),
        "fill_s": round(fill, 1),
    }


if __name__ == "__main__":
    main()
