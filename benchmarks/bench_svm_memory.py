"""The SVM solver's memory on a float16 negative pool: read in place a block at a time (as
``rcnn train-svm`` does) against a float32 copy of it (the solver's earlier layout), side by
side.

Each layout runs in its own process on the same synthetic pool (``--rows`` float16 features of
``--dim``, fc7-like: non-negative, norm about 20; 20 classes, each with ``--positives`` of its
own and every pool row a negative), solving the 20 SVMs together with ``--steps`` steps of
Newton's solver (a solve's memory is its first step's). It prints, per layout, the seconds of
the solve, the resident memory before it (the pool) and the
process's peak, and the ratio of the peaks' growth over the pool, plus the largest difference
between the two layouts' solutions.

    python benchmarks/bench_svm_memory.py --rows 200000 --json-out \\
        benchmarks/results/cpu-svm-memory.json                          # CPU: a few minutes
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = 20


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_pool(rows: int, dim: int, positives: int):
    """The pool and the positives, float16, made a block at a time (no float64 temporary)."""
    rng = np.random.default_rng(0)
    total = rows + CLASSES * positives
    x = np.empty((total, dim), np.float16)
    for begin in range(0, total, 8192):
        block = np.maximum(rng.normal(0.3, 1.0, (min(8192, total - begin), dim)), 0)
        block = block.astype(np.float32)
        for k in range(CLASSES):  # each class's positives lean on its own five dimensions
            first = rows + k * positives
            mine = slice(max(first - begin, 0), max(min(first + positives - begin, len(block)), 0))
            block[mine, 5 * k : 5 * k + 5] += 3.0
        x[begin : begin + len(block)] = block * (20 / np.sqrt(dim * 0.6))
    return x


def solve(layout: str, rows: int, dim: int, positives: int, steps: int, out: str) -> None:
    import torch

    from rcnn.heads import solver
    from rcnn.heads.solver import Rows, solve_svms

    solver.MAX_STEPS = steps  # the memory of a solve is that of its first step

    x = torch.from_numpy(make_pool(rows, dim, positives))
    y = -torch.ones(len(x), CLASSES)
    for k in range(CLASSES):
        y[rows + k * positives : rows + (k + 1) * positives, k] = 1
    u = torch.where(y > 0, 2.0, 1.0) * 1e-3
    before = rss_mb()
    start = time.perf_counter()
    features = Rows([x]) if layout == "in place" else x.float()
    v, taken = solve_svms(features, y, u, bias=10.0)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(out, v.numpy())
    print(json.dumps({"seconds": round(seconds, 1), "steps": taken,
                      "pool_rss_mb": round(before), "peak_rss_mb": round(peak)}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="negatives in the pool")
    parser.add_argument("--dim", type=int, default=4096, help="feature size (fc7: 4096)")
    parser.add_argument("--positives", type=int, default=200, help="each class's")
    parser.add_argument("--steps", type=int, default=3, help="Newton steps (the same in both)")
    parser.add_argument("--json-out", help="write the results here too")
    parser.add_argument("--layout", help=argparse.SUPPRESS)  # one layout, in a child process
    parser.add_argument("--solution", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.layout:
        solve(args.layout, args.rows, args.dim, args.positives, args.steps, args.solution)
        return
    sizes = ["--rows", str(args.rows), "--dim", str(args.dim), "--positives", str(args.positives),
             "--steps", str(args.steps)]  # fmt: skip
    result = {"rows": args.rows, "dim": args.dim, "classes": CLASSES,
              "pool_mb": round(args.rows * args.dim * 2 / 2**20), "layouts": {}}  # fmt: skip
    solutions = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout in ("float32 copy", "in place"):
            path = f"{tmp}/{len(solutions)}.npy"
            argv = [sys.executable, __file__, *sizes, "--layout", layout, "--solution", path]
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"the {layout} solve failed:\n{done.stderr[-3000:]}")
            result["layouts"][layout] = json.loads(done.stdout.strip().splitlines()[-1])
            print(layout, result["layouts"][layout], flush=True)
            solutions.append(np.load(path))
    copy, place = result["layouts"]["float32 copy"], result["layouts"]["in place"]
    growth = [r["peak_rss_mb"] - r["pool_rss_mb"] for r in (copy, place)]
    result["peak_growth_mb"] = dict(zip(("float32 copy", "in place"), growth, strict=True))
    result["growth_ratio"] = round(growth[1] / growth[0], 3)
    result["seconds_ratio"] = round(place["seconds"] / copy["seconds"], 3)
    scale = float(np.abs(solutions[0]).max())
    result["max_relative_difference"] = float(np.abs(solutions[1] - solutions[0]).max() / scale)
    result["when"] = time.strftime("%Y-%m-%d")
    print(json.dumps(result, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
