"""R-CNN end to end on a VOC2007-shaped synthetic set at several fractions of VOC2007, stage by
stage: how each stage's time, memory and disk grow, fitted and projected to VOC2007.

It synthesizes the largest fraction's 500x375 scenes of the 20 VOC class names once (5,011
trainval images in VOC2007, 2,501 train + 2,510 val, and 4,952 test), searches their proposals
once (`rcnn proposals`, kept as R-CNN's .mat files), and then, at each fraction ``f``, runs the
real commands on the first ``f`` of each split, each in its own process, reading the shared
proposals (``--proposals``: no search is repeated):

    prepare (seed)   `rcnn prepare --split train val` : the recipe's labels
    prepare (paper)  `rcnn prepare --split trainval --preset paper` : every proposal + the GT
    train            `rcnn train --epochs 1`
    train-svm        `rcnn train-svm` (features on the fly, the caches under --max-cache-gb)
    train-bbox       `rcnn train-bbox` (pool5 of its own regions only)
    test             `rcnn test --scorer svm --bbox-reg RUN/bbox` on the test split

Per stage it records seconds, the peak resident memory of its process tree, the peak GPU
memory where there is a GPU and the bytes it added to disk; fits each as ``a + b f`` by least
squares, reports the residuals, projects to ``f = 1`` and draws each against ``f``.

    python benchmarks/bench_scale.py --json-out benchmarks/results/cpu-scale.json \\
        --plot benchmarks/results/cpu-scale.png                        # CPU: about 15 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOC2007 = {"train": 2501, "val": 2510, "test": 4952}
STAGES = ("prepare (seed)", "prepare (paper)", "train", "train-svm", "train-bbox", "test")
METRICS = ("seconds", "peak_rss_mb", "peak_gpu_mb", "disk_mb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.03])
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--mode", choices=["fast", "quality"], default="fast")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-cache-gb", type=float, default=8.0, help="train-svm's budget")
    parser.add_argument("--work", help="folder to keep (default: a temporary one)")
    parser.add_argument("--json-out", help="write the results here too")
    parser.add_argument("--plot", help="draw each stage's numbers against the fraction here")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the fractions --json-out holds already (same --work)",
    )
    args = parser.parse_args()
    if len(args.fractions) < 3:
        parser.error("--fractions needs three values or more to fit and see residuals")
    if args.resume and not (args.work and args.json_out):
        parser.error("--resume needs --work and --json-out: the scenes and the runs to go on from")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        fractions = sorted(args.fractions)
        voc, shared = make_dataset(work, fractions[-1], args)
        done = finished_runs(args) if args.resume else {}
        runs = []
        for f in fractions:
            run = done.get(f) or run_fraction(work / f"f{f}", voc, f, shared["files"], args)
            runs.append(run)
            if args.json_out:  # after every fraction: a run cut short keeps what it measured
                write_json(args.json_out, results(args, shared, runs, complete=False))
    result = results(args, shared, runs, complete=True)
    print(format_report(result))
    if args.json_out:
        write_json(args.json_out, result)
    if args.plot:
        plot(result, args.plot)


def results(args, shared: dict, runs: list[dict], complete: bool) -> dict:
    settings = {k: v for k, v in vars(args).items() if k != "resume"}
    result = {"settings": settings, "proposals": shared, "runs": runs, "complete": complete}
    if len(runs) >= 3:
        result["fits"] = fit(runs)
    result["when"] = time.strftime("%Y-%m-%d")
    return result


def write_json(path: str, result: dict) -> None:
    """Written beside and renamed over: an interrupted write leaves the last file whole."""
    staged = Path(f"{path}.partial")
    staged.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(staged, path)


def finished_runs(args) -> dict[float, dict]:
    """The runs ``--json-out`` already holds, by fraction, where its settings are these."""
    path = Path(args.json_out)
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    keys = ("input_size", "mode", "device", "max_cache_gb")
    if any(earlier["settings"].get(k) != getattr(args, k) for k in keys):
        raise SystemExit(f"{path} was measured with other settings ({earlier['settings']}): "
                         "give another --json-out or the same settings")  # fmt: skip
    runs = {run["fraction"]: run for run in earlier["runs"]}
    print(f"--resume: {sorted(runs)} already measured in {path}", flush=True)
    return runs


def counts_of(fraction: float) -> dict[str, int]:
    return {split: max(3, round(n * fraction)) for split, n in VOC2007.items()}


def make_dataset(work: Path, fraction: float, args) -> tuple[Path, dict]:
    """The largest fraction's scenes, and their proposals searched once (timed)."""
    from rcnn.data.synth import make_synthetic_voc

    counts = counts_of(fraction)
    total = sum(counts.values())
    voc = work / "voc"
    record = work / "proposals.json"  # the search's own timings, kept for a later run
    if record.is_file():
        shared = json.loads(record.read_text())
        if shared["images"] == total and all(Path(f).is_file() for f in shared["files"].values()):
            return voc, shared
    if not (voc / "Annotations").is_dir():
        make_synthetic_voc(voc, total, seed=0, image_size=(500, 375), classes=["voc"],
                           val_fraction=counts["val"] / total,
                           test_fraction=counts["test"] / total)  # fmt: skip
    files, stages = {}, {}
    for split in ("trainval", "test"):
        files[split] = str(work / "proposals" / f"{split}.mat")
        argv = ["proposals", "--voc-root", str(voc), "--split", split, "--mode", args.mode,
                "--out", files[split], "--cache-dir", str(work / "cache"),
                "--no-progress"]  # fmt: skip
        stages[split] = run_stage(argv, work / f"proposals-{split}.json")
        print(f"proposals of {split}: {json.dumps(stages[split])}", flush=True)
    images = counts["train"] + counts["val"] + counts["test"]
    seconds = sum(s["seconds"] for s in stages.values())
    shared = {"files": files, "stages": stages, "images": images,
              "seconds_per_image": round(seconds / images, 3)}  # fmt: skip
    write_json(str(record), shared)
    return voc, shared


def subset(voc: Path, root: Path, counts: dict[str, int]) -> Path:
    """A VOC root of the first ``counts[split]`` images of each split (the scenes linked)."""
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    for folder in ("Annotations", "JPEGImages"):
        if not (root / folder).exists():
            (root / folder).symlink_to(voc / folder)
    chosen = {}
    for split, n in counts.items():
        ids = (voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:n]
        chosen[split] = ids
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    chosen["trainval"] = chosen["train"] + chosen["val"]
    (main / "trainval.txt").write_text("".join(f"{i}\n" for i in chosen["trainval"]))
    for path in (voc / "ImageSets" / "Main").glob("*_*.txt"):  # {class}_{split}.txt
        split = path.stem.rsplit("_", 1)[1]
        keep = set(chosen.get(split, []))
        lines = [line for line in path.read_text().splitlines(True) if line.split()[0] in keep]
        (main / path.name).write_text("".join(lines))
    return root


def run_fraction(work: Path, voc_all: Path, fraction: float, files: dict, args) -> dict:
    """Every stage on the fraction's subset, from scratch (an earlier run's outputs of this
    fraction are removed; the shared scenes and proposals are kept). With ``--resume``, the
    stages an earlier run of this fraction finished (their ``measured.json``, written after
    each) are kept and it goes on from the first one that did not finish."""
    measured_path = work / "measured.json"
    stages = {}
    if args.resume and measured_path.is_file():
        stages = json.loads(measured_path.read_text())
        print(f"--resume: f={fraction} keeps {list(stages)}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    counts = counts_of(fraction)
    voc = subset(voc_all, work / "voc", counts)
    run = work / "run"
    common = ["--device", args.device, "--no-progress"]
    prepare = ["prepare", "--voc-root", str(voc), "--classes", "all", "--no-progress"]
    heads = [str(run), "--data", str(work / "paper"), "--split", "trainval", *common]
    commands = {
        "prepare (seed)": [*prepare, "--out", str(work / "seed"), "--split", "train", "val",
                           "--proposals", files["trainval"]],
        "prepare (paper)": [*prepare, "--out", str(work / "paper"), "--split", "trainval",
                            "--preset", "paper", "--proposals", files["trainval"]],
        "train": ["train", "--data", str(work / "seed"), "--out", str(run), "--epochs", "1",
                  "--weights", "none", "--input-size", str(args.input_size), "--optimizer",
                  "adam", "--lr", "1e-4", *common],
        "train-svm": ["train-svm", *heads, "--max-cache-gb", str(args.max_cache_gb)],
        "train-bbox": ["train-bbox", *heads],
        "test": ["test", str(run), "--voc-root", str(voc), "--out", str(work / "test"),
                 "--scorer", "svm", "--bbox-reg", str(run / "bbox"), "--proposals",
                 files["test"], *common],
    }  # fmt: skip
    outputs = {"prepare (seed)": work / "seed", "prepare (paper)": work / "paper",
               "train": run, "train-svm": run / "svm", "train-bbox": run / "bbox",
               "test": work / "test"}  # fmt: skip
    for name in STAGES:
        if name in stages:
            continue
        shutil.rmtree(outputs[name], ignore_errors=True)  # what a run cut short left of it
        before = disk_bytes(work, exclude=voc)
        stages[name] = run_stage(commands[name], work / f"{name}.json")
        stages[name]["disk_mb"] = round((disk_bytes(work, exclude=voc) - before) / 1e6, 1)
        print(f"f={fraction} {name}: {json.dumps(stages[name])}", flush=True)
        write_json(str(measured_path), stages)
    regions = {
        split: json.loads((work / store / split / "meta.json").read_text())["arrays"]["labels"][
            "shape"][0]
        for store, split in (("seed", "train"), ("paper", "trainval"))
    }  # fmt: skip
    cache = max(float(r["cache_mb"]) for r in read_csv(run / "svm" / "svm_log.csv"))
    return {"fraction": fraction, "images": counts, "regions": regions,
            "svm_cache_mb": cache, "stages": stages}  # fmt: skip


def read_csv(path: Path) -> list[dict]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


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


def fit(runs: list[dict]) -> dict:
    """Each stage's numbers fitted as ``a + b f``: the coefficients, each run's residual
    (measured minus fitted), the root-mean-square residual relative to the mean, and the
    value at ``f = 1`` (VOC2007)."""
    fractions = np.array([r["fraction"] for r in runs])
    design = np.stack([np.ones_like(fractions), fractions], axis=1)
    out: dict = {}
    for stage in STAGES:
        out[stage] = {}
        for key in METRICS:
            values = np.array([r["stages"][stage][key] for r in runs], float)
            (a, b), *_ = np.linalg.lstsq(design, values, rcond=None)
            residuals = values - (a + b * fractions)
            scale = max(abs(values.mean()), 1e-9)
            out[stage][key] = {
                "a": round(float(a), 3), "b": round(float(b), 3),
                "residuals": [round(float(r), 2) for r in residuals],
                "relative_rms_residual": round(float(np.sqrt((residuals**2).mean()) / scale), 3),
                "at_voc2007": round(float(a + b), 1),
            }  # fmt: skip
    return out


def format_report(result: dict) -> str:
    shared = result["proposals"]
    lines = [
        f"proposals searched once: {shared['images']} images, {shared['seconds_per_image']} s "
        f"an image ({json.dumps(shared['stages'])})"
    ]
    for run in result["runs"]:
        lines.append(
            f"fraction {run['fraction']}: {run['images']} images, training regions "
            f"{run['regions']['train']}, SVM/box regions {run['regions']['trainval']}, SVM "
            f"caches at most {run['svm_cache_mb']} MB"
        )
        lines.append(f"{'stage':<17}{'s':>8}{'peak MB':>10}{'GPU MB':>9}{'disk MB':>10}")
        for stage, m in run["stages"].items():
            lines.append(f"{stage:<17}{m['seconds']:>8}{m['peak_rss_mb']:>10}"
                         f"{m['peak_gpu_mb']:>9}{m['disk_mb']:>10.1f}")  # fmt: skip
    lines.append("fits a + b f: relative rms residual; the fit at VOC2007 (f = 1):")
    lines.append(f"{'stage':<17}{'hours':>8}{'resid':>7}{'peak GB':>9}{'resid':>7}"
                 f"{'disk GB':>9}{'resid':>7}")  # fmt: skip
    for stage, m in result["fits"].items():
        s, r, d = m["seconds"], m["peak_rss_mb"], m["disk_mb"]
        lines.append(
            f"{stage:<17}{s['at_voc2007'] / 3600:>8.2f}{s['relative_rms_residual']:>7.3f}"
            f"{r['at_voc2007'] / 1024:>9.2f}{r['relative_rms_residual']:>7.3f}"
            f"{d['at_voc2007'] / 1000:>9.2f}{d['relative_rms_residual']:>7.3f}"
        )
    total = sum(m["seconds"]["at_voc2007"] for m in result["fits"].values())
    search = shared["seconds_per_image"] * sum(VOC2007.values()) / 3600
    lines.append(f"{'all stages':<17}{total / 3600:>8.2f}   (+ {search:.2f} h of Selective "
                 "Search, once, on this machine)")  # fmt: skip
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = np.array([r["fraction"] for r in result["runs"]])
    line = np.linspace(0, fractions.max() * 1.05, 20)
    panels = (("seconds", "seconds"), ("peak_rss_mb", "peak memory (MB)"),
              ("disk_mb", "disk added (MB)"))  # fmt: skip
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for stage in STAGES:
            values = [r["stages"][stage][key] for r in result["runs"]]
            f = result["fits"][stage][key]
            (points,) = ax.plot(fractions, values, "o", label=stage)
            ax.plot(line, f["a"] + f["b"] * line, "-", color=points.get_color(), alpha=0.6)
        ax.set_xlabel("fraction of VOC2007")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("R-CNN's stages against the fraction of VOC2007 (points: measured, "
                    "lines: a + b f)")  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
