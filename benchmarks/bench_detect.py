"""Detection speed: the project's detector against the usual per-proposal detector, side by side.

In one process, on the same images, the same cached proposals and the same model:

* **naive** (the reference car detector's way): for each proposal, crop the BGR image, then
  ToPILImage -> Resize(227) -> ToTensor -> Normalize(0.5) and one forward pass of batch 1; keep
  boxes whose car probability reaches the threshold; a hand-written greedy NMS;
* **rcnn**: :class:`rcnn.detection.detector.Detector` (batched warps and forward passes,
  ``torchvision.ops.batched_nms``).

Images/s are measured with proposals excluded (both read the same cached boxes); the time
Selective Search takes per image is measured separately, from an empty cache. Both run under
``torch.no_grad`` with the model in eval mode. The project's detector runs with its default
precision (bfloat16 where the device has it natively) and again in float32, the naive one in
float32, as the reference does.

    python benchmarks/bench_detect.py                                  # CPU, synthetic images
    python benchmarks/bench_detect.py --device cuda --images 20 --naive-images 5
    python benchmarks/bench_detect.py --model RUN --voc-root VOC --split test
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision import transforms

from rcnn.data.config import ProposalConfig
from rcnn.data.proposals import compute_proposals
from rcnn.data.synth import make_synthetic_voc
from rcnn.data.voc import VOCDataset, read_id_file
from rcnn.detection.config import DetectorConfig
from rcnn.detection.detector import Detector
from rcnn.modeling.checkpoint import LoadedModel, load_model
from rcnn.modeling.model import ModelSpec, build_model
from rcnn.runtime.config import InferenceConfig


def naive_nms(boxes: list, scores: list, threshold: float = 0.3) -> tuple[list, list]:
    """Greedy NMS in plain Python, one box at a time, as the reference detector writes it."""
    order = list(np.argsort(scores)[::-1])
    kept_boxes, kept_scores = [], []
    while order:
        best = order.pop(0)
        kept_boxes.append(boxes[best])
        kept_scores.append(scores[best])
        survivors = []
        for other in order:
            if _iou(boxes[best], boxes[other]) <= threshold:
                survivors.append(other)
        order = survivors
    return kept_boxes, kept_scores


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@torch.no_grad()
def naive_detect(model, image_bgr, boxes, device, size: int, thresh: float):
    transform = transforms.Compose(
        [
            transforms.ToPILImage(),
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    kept, scores = [], []
    for x1, y1, x2, y2 in boxes.tolist():
        crop = image_bgr[y1:y2, x1:x2]
        output = model(transform(crop).to(device).unsqueeze(0))[0]
        probs = torch.softmax(output, dim=0).cpu().numpy()
        if probs[1] >= thresh:
            kept.append((x1, y1, x2, y2))
            scores.append(float(probs[1]))
    return naive_nms(kept, scores)


def time_detector(detector: Detector, results: list, device) -> tuple[list, float]:
    """Scoring and NMS of already computed proposals, after one warm-up image."""
    list(detector._detect(results[:1]))  # cudnn autotuning, thread pools
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    found = list(detector._detect(results))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return found, time.perf_counter() - start


def images_and_model(args, work: Path):
    if args.voc_root:
        voc = VOCDataset(args.voc_root)
        ids = read_id_file(voc.split_path(args.split))[: args.images]
        paths = [str(voc.image_path(i)) for i in ids]
    else:
        width, height = (int(v) for v in args.size.split("x"))
        make_synthetic_voc(work / "voc", args.images + 2, seed=0, image_size=(width, height))
        paths = sorted(str(p) for p in (work / "voc" / "JPEGImages").glob("*.jpg"))[: args.images]
    if args.model:
        return paths, load_model(args.model)
    torch.manual_seed(0)
    model = build_model("alexnet", 2, "none").eval()
    return paths, LoadedModel(model, ["car"], ModelSpec(input_size=args.input_size), "random")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="run folder or best.pt (default: random AlexNet)")
    parser.add_argument("--voc-root", help="images of a VOC split (default: synthetic images)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=4, help="images for the project detector")
    parser.add_argument("--naive-images", type=int, default=2, help="of those, for the naive one")
    parser.add_argument("--size", default="500x375", help="synthetic image size (VOC's usual)")
    parser.add_argument("--input-size", type=int, default=227, help="warp size (random model)")
    parser.add_argument("--mode", default="fast", choices=["fast", "quality"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--score-thresh", type=float, default=0.6)
    parser.add_argument("--json-out", help="write the numbers here too")
    args = parser.parse_args()

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths, loaded = images_and_model(args, work)
        config = ProposalConfig(args.mode)
        start = time.perf_counter()
        results = compute_proposals(paths, config, work / "cache", workers=0, progress=False)
        proposal_s = (time.perf_counter() - start) / len(paths)
        proposals = sum(len(r.boxes) for r in results)
        inference = InferenceConfig(device=args.device)
        cfg = DetectorConfig(
            score_thresh=args.score_thresh, inference=inference, cache_dir=str(work / "cache")
        )
        detector = Detector(loaded, cfg)
        ours, ours_s = time_detector(detector, results, device)
        fp32 = Detector(loaded, replace(cfg, inference=replace(inference, amp=False)))
        fp32_s = time_detector(fp32, results, device)[1] if detector.inference.amp else ours_s
        model, size = fp32.model, detector.warp.size
        naive = results[: args.naive_images]
        naive_detect(model, cv2.imread(naive[0].path), naive[0].boxes[:8], device, size, 0.6)
        start = time.perf_counter()
        found = [
            naive_detect(model, cv2.imread(r.path), r.boxes, device, size, args.score_thresh)
            for r in naive
        ]
        naive_s = time.perf_counter() - start
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "images": len(paths),
        "proposals_per_image": round(proposals / len(paths)),
        "input_size": size,
        "rcnn_amp": detector.inference.amp,
        "rcnn_images_per_s": round(len(paths) / ours_s, 3),
        "rcnn_fp32_images_per_s": round(len(paths) / fp32_s, 3),
        "naive_images_per_s": round(len(naive) / naive_s, 3),
        "speedup": round((len(paths) / ours_s) / (len(naive) / naive_s), 1),
        "speedup_fp32": round((len(paths) / fp32_s) / (len(naive) / naive_s), 1),
        "proposal_seconds_per_image": round(proposal_s, 3),
        "rcnn_detections": sum(len(d) for _, d in ours),
        "naive_detections": sum(len(b) for b, _ in found),
    }
    print(json.dumps(report, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
