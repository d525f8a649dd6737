"""`rcnn prepare` in one process against two under torchrun, side by side in one run.

Synthesizes a VOC-layout set, then runs the same `rcnn prepare` (Selective Search in fast
mode, a fresh proposal cache each time) three ways and prints their wall times and ratios:

    one process, 1 worker      the baseline: one core searching
    torchrun, 2 x 1 worker     two processes, each with its share of the images
    one process, 2 workers     what one machine already does with its cores

Two processes on one machine stand for two machines of one core each: the work is shared out
the same way across machines. The stores of every run are checked byte-identical.

    python benchmarks/bench_distributed.py --images 40
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


def run(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def stores(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (".lock", "summary.json")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", default="500x375", help="image size, WxH")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    from rcnn.data.synth import make_synthetic_voc

    width, height = (int(v) for v in args.size.split("x"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_synthetic_voc(work / "voc", args.images, seed=0, image_size=(width, height),
                           classes=["car", "bus", "person"])  # fmt: skip
        prepare = ["-m", "rcnn", "prepare", "--voc-root", str(work / "voc"), "--split", "train",
                   "val", "--classes", "car", "bus", "person", "--mode", "fast",
                   "--no-progress"]  # fmt: skip
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        ways = {
            "one process, 1 worker": [sys.executable, *prepare, "--workers", "1"],
            "torchrun, 2 x 1 worker": [
                *torchrun,
                "--nproc_per_node=2",
                *prepare,
                "--workers",
                "1",
            ],  # fmt: skip
            "one process, 2 workers": [sys.executable, *prepare, "--workers", "2"],
        }
        seconds, outputs = {}, {}
        for name, cmd in ways.items():
            out, cache = work / f"out-{len(seconds)}", work / f"cache-{len(seconds)}"
            seconds[name] = run([*cmd, "--out", str(out), "--cache-dir", str(cache)], env)
            outputs[name] = stores(out)
            print(f"{name}: {seconds[name]:.1f} s", flush=True)
        same = all(files == outputs["one process, 1 worker"] for files in outputs.values())
    base, two = seconds["one process, 1 worker"], seconds["torchrun, 2 x 1 worker"]
    result = {
        "images": args.images,
        "size": args.size,
        "cpus": os.cpu_count(),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "speed-up of 2 processes over 1": round(base / two, 2),
        "2 processes against one process with 2 workers": round(
            seconds["one process, 2 workers"] / two, 2
        ),
        "stores identical": same,
    }
    print(json.dumps(result, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    if not same:
        raise SystemExit("the stores differ")


if __name__ == "__main__":
    main()
