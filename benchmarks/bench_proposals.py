"""Proposal throughput: 1 worker vs all cores vs a re-run from cache, side by side in one run.

python benchmarks/bench_proposals.py                    # synthetic 320x240 images
python benchmarks/bench_proposals.py --voc-root DIR     # a real VOC split
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from rcnn.data.config import ProposalConfig
from rcnn.data.proposals import compute_proposals
from rcnn.data.synth import make_synthetic_voc
from rcnn.data.voc import VOCDataset


def timed(paths, config, cache_dir, workers) -> float:
    start = time.perf_counter()
    results = compute_proposals(paths, config, cache_dir, workers=workers, progress=False)
    assert all(not r.error for r in results)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--voc-root", help="VOC root; default: a synthetic set in a temp dir")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=24, help="images to search")
    parser.add_argument("--mode", choices=["quality", "fast"], default="fast")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = args.voc_root
        if root is None:
            root = tmp / "voc"
            make_synthetic_voc(root, 2 * args.images + 8, seed=0)  # ~half are train
        voc = VOCDataset(root)
        ids = voc.select_images(args.split, ["car"])[: args.images]
        paths = [str(voc.image_path(i)) for i in ids]
        config = ProposalConfig(args.mode)
        one = timed(paths, config, tmp / "cache1", workers=1)
        many = timed(paths, config, tmp / "cacheN", workers=args.workers)
        cached = timed(paths, config, tmp / "cacheN", workers=args.workers)

    n = len(paths)
    report = {
        "images": n,
        "mode": args.mode,
        "workers": args.workers,
        "images_per_s_1_worker": round(n / one, 2),
        f"images_per_s_{args.workers}_workers": round(n / many, 2),
        "scaling": round(one / many, 2),
        "cached_rerun_s": round(cached, 4),
        "cached_speedup_vs_first_run": round(many / cached, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
