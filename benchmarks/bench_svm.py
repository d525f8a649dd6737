"""The SVM stage against the features it needs, side by side on one 20-class store.

It synthesizes ``--images`` scenes of 500x375 with the 20 VOC class names (trainval and a
test split), prepares the trainval regions with the paper's preset (every proposal and the
ground-truth boxes) and the recipe's train/val stores, fine-tunes a weak network (AlexNet at
64 pixels, one epoch from random weights), then runs, each in its own process and timed:

    rcnn features                       fc7 of every trainval region (the store's time)
    rcnn train-svm                      features on the fly, Newton's solver (the default)
    rcnn train-svm --solver liblinear   the same, scikit-learn's LinearSVC (the earlier solver)
    rcnn test --scorer svm              each set of SVMs on the test split

and prints the stage's seconds and peak memory, the ratio of ``train-svm`` to ``features``,
each class's final SVM objective by both solvers, and the test AP of both.

    python benchmarks/bench_svm.py --images 40 --json-out benchmarks/results/cpu-svm.json
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(argv: list[str], log: Path) -> dict:
    """Runs ``rcnn ARGV`` in a new process; its seconds and peak memory (GNU time)."""
    cmd = ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "rcnn", *argv]
    with log.open("w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"rcnn {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    seconds, kb = done.stderr.strip().splitlines()[-1].split()
    return {"seconds": float(seconds), "peak_mb": round(int(kb) / 1024)}


def final_objectives(svm: Path) -> dict[str, float]:
    rows = list(csv.DictReader((svm / "svm_log.csv").open()))
    return {row["class"]: float(row["objective"]) for row in rows}  # the last training wins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40, help="trainval images (and as many test)")
    parser.add_argument("--work", help="folder to keep (default: a temporary one)")
    parser.add_argument("--json-out", help="write the results here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        result = run(work, args.images)
    print(json.dumps(result, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")


def run(work: Path, images: int) -> dict:
    from rcnn.data.synth import make_synthetic_voc

    voc, cache, run_dir = work / "voc", work / "cache", work / "run"
    if not (voc / "Annotations").is_dir():
        make_synthetic_voc(voc, 2 * images, seed=0, image_size=(500, 375), classes=["voc"],
                           val_fraction=0.25, test_fraction=0.5)  # fmt: skip
    prepare = ["prepare", "--voc-root", str(voc), "--classes", "all", "--mode", "fast",
               "--cache-dir", str(cache), "--no-progress"]  # fmt: skip
    common = ["--device", "cpu", "--no-progress"]
    steps = {
        "prepare": [*prepare, "--out", str(work / "seed"), "--split", "train", "val"],
        "prepare (paper)": [*prepare, "--out", str(work / "paper"), "--split", "trainval",
                            "--preset", "paper"],
        "train": ["train", "--data", str(work / "seed"), "--out", str(run_dir), "--epochs", "1",
                  "--weights", "none", "--input-size", "64", "--overwrite", *common],
    }  # fmt: skip
    found: dict = {"images": {"trainval": images, "test": images}, "stages": {}}
    for name, argv in steps.items():
        found["stages"][name] = timed(argv, work / f"{name}.log")
    heads = [str(run_dir), "--data", str(work / "paper"), "--split", "trainval", *common]
    stages = {
        "features": ["features", *heads, "--out", str(work / "features")],
        "train-svm": ["train-svm", *heads, "--out", str(work / "svm")],
        "train-svm (liblinear)": ["train-svm", *heads, "--out", str(work / "svm-liblinear"),
                                  "--solver", "liblinear"],
    }  # fmt: skip
    for name, argv in stages.items():
        out = Path(argv[argv.index("--out") + 1])
        shutil.rmtree(out, ignore_errors=True)  # a kept --work: time the work, not a resume
        found["stages"][name] = timed(argv, work / f"{name}.log")
    stage = found["stages"]
    found["ratio_to_features"] = {
        name: round(stage[name]["seconds"] / stage["features"]["seconds"], 2)
        for name in ("train-svm", "train-svm (liblinear)")
    }
    newton, liblinear = (final_objectives(work / n) for n in ("svm", "svm-liblinear"))
    found["objectives"] = {
        c: {"newton": newton[c], "liblinear": liblinear[c],
            "relative": (newton[c] - liblinear[c]) / liblinear[c]}
        for c in newton
    }  # fmt: skip
    found["max_relative_objective_difference"] = max(
        abs(o["relative"]) for o in found["objectives"].values()
    )
    found["test_map"] = {}
    for name in ("svm", "svm-liblinear"):
        out = work / f"test-{name}"
        argv = ["test", str(run_dir), "--voc-root", str(voc), "--split", "test", "--scorer",
                "svm", "--svm", str(work / name), "--out", str(out), "--cache-dir", str(cache),
                "--mode", "fast", "--overwrite", *common]  # fmt: skip
        found["stages"][f"test ({name})"] = timed(argv, work / f"test-{name}.log")
        metrics = json.loads((out / "metrics.json").read_text())
        found["test_map"][name] = {"map_07": metrics["map_07"], "map": metrics["map"]}
    found["regions"] = json.loads((work / "paper" / "summary.json").read_text())["splits"]
    found["when"] = time.strftime("%Y-%m-%d")
    return found


if __name__ == "__main__":
    main()
