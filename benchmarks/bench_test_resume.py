"""`rcnn test` resumed when every image is already done: how long until the metrics?

Builds a synthetic VOC split of VOC2007 test's size (4,952 images by default), a
random-initialised AlexNet checkpoint, runs `rcnn test` on one image to write the settings,
then fills in every other image's per-image detections file (``--per-image`` random
detections an image and class, as the detector would leave them, with the digest of the
image and its annotation) and times the real command, process start included. Nothing is
detected: the time is that of checking the inputs, reading the saved detections, writing the
result files and scoring them.

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

    from rcnn.data.synth import make_synthetic_voc
    from rcnn.data.voc import VOCDataset, read_id_file
    from rcnn.detection.evaluate_split import input_digest, load_ground_truth
    from rcnn.files import npz_bytes
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
        boxes = np.concatenate([xy, xy + rng.uniform(8, 60, (n, 2))], axis=1)
        data = {
            "boxes": boxes.astype(np.float32),
            "scores": rng.random(n).astype(np.float32),
            "labels": np.repeat(np.arange(1, len(classes) + 1), per_image),
            "objects": np.asarray(len(truth.objects[image_id])),
            "found": np.asarray(len(truth.objects[image_id])),
            "error": np.asarray(""),
            "inputs": np.asarray(input_digest(voc, image_id, truth)),
        }
        (out / "detections" / f"{image_id}.npz").write_bytes(npz_bytes(data))
    fill = time.perf_counter() - start - setup
    timed = []
    for _ in range(2):
        begin = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        timed.append(round(time.perf_counter() - begin, 2))
        if done.returncode != 0:
            raise SystemExit(done.stderr)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "images": len(ids),
        "classes": len(classes),
        "detections": sum(c["detections"] for c in metrics["classes"].values()),
        "no_op_resume_s": timed,
        "setup_s": round(setup, 1),
        "fill_s": round(fill, 1),
    }


if __name__ == "__main__":
    main()
