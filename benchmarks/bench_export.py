"""The exported detector against the torch detector on the CPU, side by side in one process.

The same network (AlexNet at 227 by default, random weights: speed does not depend on them),
the same synthetic image and the same proposals; both in float32 (the export's precision):

* **torch**: :class:`rcnn.detection.detector.Detector` (OpenCV warps in threads, batched
  forward passes, the numpy heads and ``batched_nms``), proposals given;
* **onnxruntime**: the graph of ``rcnn export`` on the CPU provider (warp, network, SVMs,
  box regression and NMS in one call).

Runs alternate (torch, onnxruntime, torch, ...) so that both see the same machine. Prints
regions/s of each, their ratio and the ONNX file's size; writes a JSON record.

    python benchmarks/bench_export.py --out benchmarks/results/cpu-export.json
    python benchmarks/bench_export.py --backbone alexnet_tiny --size 64 --regions 500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from rcnn.detection.config import DetectorConfig
from rcnn.detection.detector import Detector
from rcnn.detection.export import build_graph, example_inputs, to_onnx
from rcnn.detection.exported import OPSET, ExportedModel
from rcnn.modeling.checkpoint import LoadedModel
from rcnn.modeling.model import ModelSpec, build_model
from rcnn.runtime.config import InferenceConfig


def proposals(n: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """``n`` random boxes of at least 16 pixels inside the image: int32 ``[n, 4]``."""
    rng = np.random.default_rng(seed)
    x1, y1 = rng.integers(0, width - 16, n), rng.integers(0, height - 16, n)
    x2 = np.minimum(x1 + 16 + rng.integers(0, width, n), width)
    y2 = np.minimum(y1 + 16 + rng.integers(0, height, n), height)
    return np.stack([x1, y1, x2, y2], 1).astype(np.int32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="alexnet")
    p.add_argument("--size", type=int, default=227, help="input size")
    p.add_argument("--regions", type=int, default=256, help="proposals of the image")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="JSON record to write")
    args = p.parse_args()
    torch.manual_seed(0)
    model = build_model(args.backbone, 3, "none")
    loaded = LoadedModel(model.eval(), ["car", "bus"], ModelSpec(args.backbone, args.size, 0),
                         "benchmark")  # fmt: skip
    cfg = DetectorConfig(score_thresh=0.0, inference=InferenceConfig(device="cpu", amp=False))
    detector = Detector(loaded, cfg)
    width, height = 500, 375  # VOC's usual image
    boxes = proposals(args.regions, width, height)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as scratch:
        path = str(Path(scratch) / "image.png")
        cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        graph, meta = build_graph(detector, loaded)
        with torch.no_grad():
            data = to_onnx(graph, *example_inputs(args.size), meta, OPSET, args.backbone)
        onnx_file = Path(scratch) / "model.onnx"
        onnx_file.write_bytes(data)
        exported = ExportedModel(onnx_file)

        def run_torch():
            out = detector.forward([path], [boxes], [(width, height)])[0]
            return detector.postprocess(boxes, out, (width, height))

        def run_onnx():
            return exported(image, boxes)

        times = {"torch": [], "onnxruntime": []}
        found = {}
        for name, run in (("torch", run_torch), ("onnxruntime", run_onnx)):
            found[name] = run()  # warm-up
        for _ in range(args.repeats):
            for name, run in (("torch", run_torch), ("onnxruntime", run_onnx)):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    rate = {name: args.regions / min(t) for name, t in times.items()}
    ratio = rate["onnxruntime"] / rate["torch"]
    same = len(found["torch"]) == len(found["onnxruntime"])
    record = {
        "backbone": args.backbone, "input_size": args.size, "regions": args.regions,
        "image": [width, height], "repeats": args.repeats, "precision": "float32",
        "seconds": times, "regions_per_s": rate, "onnxruntime_over_torch": ratio,
        "onnx_bytes": len(data), "opset": OPSET, "same_detection_count": same,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
    }  # fmt: skip
    print(f"{args.backbone} at {args.size}, {args.regions} regions: torch "
          f"{rate['torch']:.1f} regions/s, onnxruntime {rate['onnxruntime']:.1f} regions/s "
          f"(ratio {ratio:.2f}); ONNX file {len(data) / 1e6:.1f} MB")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
