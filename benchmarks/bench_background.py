"""Car SVMs mined with and without the background-only images, scored on a test split.

It synthesizes ``--images`` trainval scenes and as many test scenes of cars, buses and people
(many show no car), fine-tunes the demo's network on the car regions (the seed preset's train/val
stores), then prepares the trainval regions with the paper preset twice: as it is, every image
of the split (those without a car are background only: all their regions negatives), and with
``background_images`` off, the car images alone (the rule before). Car SVMs on fc7 are trained
on each store and scored by ``rcnn test --scorer svm`` on the test split, whose images without
a car are scored too. Prints both APs (VOC07 11-point and area) and the images each store's
negatives came from.

    python benchmarks/bench_background.py --images 40 --json-out \\
        benchmarks/results/cpu-background.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

# The demo's network (`rcnn demo`): AlexNet from random initialisation at 80x80, Adam at 1e-4
# for 3 epochs, whose car SVMs reach an AP near 0.7 on these scenes, so that a difference
# between the two stores is more than noise.
TRAIN = ["--preset", "adam", "--weights", "none", "--input-size", "80", "--epochs", "3",
         "--workers", "2"]  # fmt: skip
COMMON = ["--device", "cpu", "--no-progress", "--no-amp"]


def rcnn(*argv: str) -> None:
    from rcnn.cli import main

    if main(list(argv)) != 0:
        raise SystemExit(f"rcnn {' '.join(argv)} failed")


def prepare_paper(voc: Path, out: Path, cache: Path, background: bool) -> dict:
    """The paper preset's trainval store of cars, with or without the background-only images."""
    from rcnn.data.config import PrepareConfig, ProposalConfig
    from rcnn.data.labels import PRESETS
    from rcnn.data.prepare import run_prepare

    labels = replace(PRESETS["paper"], background_images=background)
    cfg = PrepareConfig(str(voc), str(out), splits=["trainval"], classes=["car"], labels=labels,
                        proposals=ProposalConfig("fast"), cache_dir=str(cache),
                        progress=False)  # fmt: skip
    return run_prepare(cfg)["splits"]["trainval"]


def run(work: Path, images: int) -> dict:
    from rcnn.data.synth import make_synthetic_voc

    voc, cache, run_dir = work / "voc", work / "cache", work / "run"
    if not (voc / "Annotations").is_dir():  # a kept --work: its dataset and network reused
        make_synthetic_voc(voc, 2 * images, seed=0, image_size=(256, 192),
                           classes=["car", "bus", "person"], val_fraction=0.25,
                           test_fraction=0.5)  # fmt: skip
    if not (run_dir / "best.pt").is_file():
        rcnn("prepare", "--voc-root", str(voc), "--out", str(work / "seed"), "--mode", "fast",
             "--cache-dir", str(cache), "--no-progress")  # fmt: skip
        rcnn("train", "--data", str(work / "seed"), "--out", str(run_dir), "--overwrite",
             *TRAIN, *COMMON)  # fmt: skip
    found: dict = {"images": {"trainval": images, "test": images}, "variants": {}}
    for name, background in (("with background-only images", True), ("car images only", False)):
        folder = "all" if background else "cars"
        regions = prepare_paper(voc, work / f"paper-{folder}", cache, background)
        svm = work / f"svm-{folder}"
        rcnn("train-svm", str(run_dir), "--data", str(work / f"paper-{folder}"), "--split",
             "trainval", "--out", str(svm), "--overwrite", *COMMON)  # fmt: skip
        out = work / f"test-{folder}"
        rcnn("test", str(run_dir), "--voc-root", str(voc), "--split", "test", "--scorer", "svm",
             "--svm", str(svm), "--out", str(out), "--cache-dir", str(cache), "--mode", "fast",
             "--overwrite", "--workers", "1", *COMMON)  # fmt: skip
        metrics = json.loads((out / "metrics.json").read_text())
        found["variants"][name] = {
            "trainval_images": regions["images"],
            "background_only": regions["background_only"],
            "negatives": regions["negatives"],
            "negatives_from": json.loads((svm / "svm.json").read_text())["negatives_from"],
            "car_ap_07": metrics["map_07"],
            "car_ap": metrics["map"],
        }
    found["when"] = time.strftime("%Y-%m-%d")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40, help="trainval images (and as many test)")
    parser.add_argument("--work", help="folder to keep (default: a temporary one)")
    parser.add_argument("--json-out", help="write the results here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(args.work or tmp), args.images)
    print(json.dumps(result, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
