"""``rcnn export``: a trained detector as one ONNX or TorchScript file."""

from __future__ import annotations

from rcnn.cli.common import add_model, parser
from rcnn.cli.detect import add_scoring_flags, scoring
from rcnn.detection.config import DetectorConfig
from rcnn.detection.exported import FORMATS, OPSET, ExportConfig


def add_export(sub) -> None:
    p = parser(
        sub,
        "export",
        "the detector as one ONNX graph (onnxruntime) or TorchScript file",
        "One graph from an image (uint8 H x W x 3, RGB) and its proposals (N x 4, x1 y1 x2 y2, "
        "x2 and y2 exclusive) to its detections (boxes, scores, labels, best first): the warp "
        "with context padding, the network, the SVMs or the softmax, box regression, the "
        "score threshold, per-class NMS and the caps, in float32. The classes, normalization, "
        "input size, context padding, thresholds and the weights' digest are in its metadata. "
        "`rcnn detect FILE.onnx` and Detector.load('FILE.onnx') run an ONNX file with "
        "onnxruntime, without torch; a TorchScript file needs only torch.",
    )
    add_model(p)
    p.add_argument("--out", required=True, help="the file to write (.onnx, or .pt for TorchScript)")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="the kind of file")
    add_scoring_flags(
        p,
        "drop boxes scoring less (default: 0.6 for softmax scores, 0 for SVM scores)",
        DetectorConfig(),
    )
    p.add_argument(
        "--keep-all", action="store_true", help="no score threshold (for AP, as `rcnn test`)"
    )
    p.add_argument("--opset", type=int, default=OPSET, help="ONNX opset (>= 16)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def cmd_export(args) -> None:
    from rcnn.detection.export import run_export

    detector = DetectorConfig(**scoring(args, args.keep_all))
    cfg = ExportConfig(args.model, args.out, args.format, detector, args.classes, args.opset,
                       args.overwrite)  # fmt: skip
    summary = run_export(cfg)
    print(f"{summary['format']} detector of {', '.join(summary['classes'])} "
          f"({summary['scorer']}{', box regression' if summary['bbox_reg'] else ''}) in "
          f"{summary['out']} ({summary['bytes'] / 1e6:.1f} MB)")  # fmt: skip
