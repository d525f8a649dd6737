"""R-CNN end to end on a VOC2007-shaped synthetic set, stage by stage, projected to VOC2007.

At each fraction ``f`` of VOC2007 (5,011 trainval images, 2,501 train + 2,510 val, and 4,952
test images) it synthesizes 500x375 scenes of the 20 VOC class names, then runs the real
commands, each in its own process:

    prepare (seed)   `rcnn prepare --split train val` : Selective Search + the recipe's labels
    prepare (paper)  `rcnn prepare --split trainval --preset paper` : every proposal + the GT
    train            `rcnn train --epochs 1`
    train-svm        `rcnn train-svm` (features computed on the fly: no feature store)
    train-bbox       `rcnn train-bbox` (pool5 of its own regions only)
    test             `rcnn test --scorer svm --bbox-reg RUN/bbox` on the test split

and records, per stage: seconds, the peak resident memory of its largest process, the peak
GPU memory where there is a GPU, and the bytes it added to disk (outputs and the proposal
cache). With two fractions or more, each number is fitted as ``a + b * f`` (least squares)
and projected to ``f = 1``: full VOC2007. Regions, proposals and images grow with ``f``;
what does not (a process's start, the network) lands in ``a``.

    python benchmarks/bench_scale.py                                   # CPU: a few minutes
    python benchmarks/bench_scale.py --fractions 0.02 0.05 --input-size 227 --device cuda

On a CPU the network stages dominate: the default input size is 64 pixels (a 227-pixel
AlexNet costs about 12x more a region), and the projection is of that.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOC2007 = {"train": 2501, "val": 2510, "test": 4952}
STAGES = ("prepare (seed)", "prepare (paper)", "train", "train-svm", "train-bbox", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.006, 0.012])
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--mode", choices=["fast", "quality"], default="fast")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", help="folder to keep (default: a temporary one)")
    parser.add_argument("--json-out", help="write the results here too")
    args = parser.parse_args()
    if len(args.fractions) < 2:
        parser.error("--fractions needs two values or more to project")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        runs = [run_fraction(work / f"f{f}", f, args) for f in sorted(args.fractions)]
    result = {"settings": vars(args), "runs": runs, "projected": project(runs)}
    print(format_report(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")


def run_fraction(work: Path, fraction: float, args) -> dict:
    from rcnn.data.synth import make_synthetic_voc

    counts = {split: max(3, round(n * fraction)) for split, n in VOC2007.items()}
    total = sum(counts.values())
    voc = work / "voc"
    if not (voc / "Annotations").is_dir():
        make_synthetic_voc(voc, total, seed=0, image_size=(500, 375), classes=["voc"],
                           val_fraction=counts["val"] / total,
                           test_fraction=counts["test"] / total)  # fmt: skip
    cache, run = work / "cache", work / "run"
    common = ["--device", args.device, "--no-progress"]
    prepare = ["prepare", "--voc-root", str(voc), "--classes", "all", "--mode", args.mode,
               "--cache-dir", str(cache), "--no-progress"]  # fmt: skip
    heads = [str(run), "--data", str(work / "paper"), "--split", "trainval", *common]
    commands = {
        "prepare (seed)": [*prepare, "--out", str(work / "seed"), "--split", "train", "val"],
        "prepare (paper)": [*prepare, "--out", str(work / "paper"), "--split", "trainval",
                            "--preset", "paper"],
        "train": ["train", "--data", str(work / "seed"), "--out", str(run), "--epochs", "1",
                  "--weights", "none", "--input-size", str(args.input_size), "--optimizer",
                  "adam", "--lr", "1e-4", *common],
        "train-svm": ["train-svm", *heads],
        "train-bbox": ["train-bbox", *heads],
        "test": ["test", str(run), "--voc-root", str(voc), "--out", str(work / "test"),
                 "--scorer", "svm", "--bbox-reg", str(run / "bbox"), "--mode", args.mode,
                 "--cache-dir", str(cache), *common],
    }  # fmt: skip
    stages = {}
    for name in STAGES:
        before = disk_bytes(work, exclude=voc)
        stages[name] = run_stage(commands[name], work / f"{name}.json")
        stages[name]["disk_bytes"] = disk_bytes(work, exclude=voc) - before
        print(f"f={fraction} {name}: {json.dumps(stages[name])}", flush=True)
    regions = {
        split: json.loads((work / store / split / "meta.json").read_text())["arrays"]["labels"][
            "shape"][0]
        for store, split in (("seed", "train"), ("paper", "trainval"))
    }  # fmt: skip
    return {"fraction": fraction, "images": counts, "regions": regions, "stages": stages}


def run_stage(argv: list[str], record: Path) -> dict:
    """One command in its own process; its seconds, peak memory and GPU memory."""
    code = (
        "import json, resource, sys\n"
        "from rcnn.cli import main\n"
        f"status = main({argv!r})\n"
        "usage = [resource.getrusage(w).ru_maxrss for w in "
        "(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]\n"
        "gpu = 0\n"
        "if 'torch' in sys.modules:\n"
        "    import torch\n"
        "    if torch.cuda.is_initialized():\n"
        "        gpu = torch.cuda.max_memory_allocated()\n"
        f"open({str(record)!r}, 'w').write(json.dumps({{'status': status, 'rss_kb': usage, "
        "'gpu': gpu}))\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not record.is_file():
        raise SystemExit(f"rcnn {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    usage = json.loads(record.read_text())
    if usage["status"] != 0:
        raise SystemExit(f"rcnn {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(max(usage["rss_kb"]) / 1024, 1),
        "peak_gpu_mb": round(usage["gpu"] / 2**20, 1),
    }


def disk_bytes(folder: Path, exclude: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        if Path(root).is_relative_to(exclude):
            continue
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def project(runs: list[dict]) -> dict:
    """Each stage's numbers fitted as a + b * fraction and evaluated at fraction 1."""
    fractions = np.array([r["fraction"] for r in runs])
    design = np.stack([np.ones_like(fractions), fractions], axis=1)
    out = {}
    for stage in STAGES:
        out[stage] = {}
        for key in ("seconds", "peak_rss_mb", "peak_gpu_mb", "disk_bytes"):
            values = np.array([r["stages"][stage][key] for r in runs], float)
            (a, b), *_ = np.linalg.lstsq(design, values, rcond=None)
            out[stage][key] = round(float(max(a + b, values.max())), 1)
    return out


def format_report(result: dict) -> str:
    lines = []
    for run in result["runs"]:
        lines.append(
            f"fraction {run['fraction']}: {run['images']} images, training regions "
            f"{run['regions']['train']}, SVM/box regions {run['regions']['trainval']}"
        )
        lines.append(f"{'stage':<17}{'s':>8}{'peak MB':>10}{'GPU MB':>9}{'disk MB':>10}")
        for stage, m in run["stages"].items():
            lines.append(f"{stage:<17}{m['seconds']:>8}{m['peak_rss_mb']:>10}"
                         f"{m['peak_gpu_mb']:>9}{m['disk_bytes'] / 1e6:>10.1f}")  # fmt: skip
    lines.append("projected to VOC2007 (fraction 1):")
    lines.append(f"{'stage':<17}{'hours':>8}{'peak GB':>10}{'GPU GB':>9}{'disk GB':>10}")
    for stage, m in result["projected"].items():
        lines.append(f"{stage:<17}{m['seconds'] / 3600:>8.2f}{m['peak_rss_mb'] / 1024:>10.2f}"
                     f"{m['peak_gpu_mb'] / 1024:>9.2f}{m['disk_bytes'] / 1e9:>10.2f}")  # fmt: skip
    total = sum(m["seconds"] for m in result["projected"].values())
    lines.append(f"{'all stages':<17}{total / 3600:>8.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
