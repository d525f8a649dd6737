"""``OUT/report.md``: what a person reads first after ``rcnn pipeline``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rcnn.files import atomic_write_bytes
from rcnn.progress import minutes_seconds

FINAL = "fine-tuned/fc7-bbox"  # the paper's detector: fc7 SVMs of the fine-tuned network + boxes


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else minutes_seconds(seconds)


def _link(out: Path, path: Path, text: str) -> str:
    return f"[{text}]({path.relative_to(out).as_posix()})" if path.exists() else ""


def _image(out: Path, path: Path, text: str) -> list[str]:
    return [f"![{text}]({path.relative_to(out).as_posix()})", ""] if path.exists() else []


def write_report(cfg, out: Path, stages: dict, seconds: float) -> Path:
    """Per-class AP of the final detector, the ablation beside the paper's numbers, the
    fine-tuning, and each stage's time and peak memory; returns the report's path."""
    ablation = out / "ablation"
    data = f"COCO {cfg.coco} (images {cfg.images})" if cfg.coco else f"VOC {cfg.voc_root}"
    lines = [
        f"# R-CNN on {data}",
        "",
        f"Classes: {', '.join(cfg.classes)}. Made by `rcnn pipeline` "
        f"({time.strftime('%Y-%m-%d %H:%M')}); the settings of each stage are in `.stages/`.",
        "",
    ]
    final = ablation / FINAL / "metrics.json"
    if final.is_file():
        from rcnn.evaluation.detection_metrics import format_report, nan_from_null

        metrics = nan_from_null(json.loads(final.read_text()))
        lines += [
            f"## Detection on the {cfg.test_split} split ({metrics.get('images', '?')} images)",
            "",
            "R-CNN's detector (SVMs on the fine-tuned network's fc7 features, box regression), "
            "scored by the VOC devkit's rules (AP (07): 11-point, as the paper reports it; "
            "AP: area under the curve) and by COCO's:",
            "",
            "```",
            format_report(metrics),
            "```",
            "",
            *_image(out, ablation / FINAL / "pr.png", "precision-recall"),
            *_image(out, ablation / FINAL / "false_positives.png", "top false positives"),
        ]
    table = ablation / "ablation.md"
    if table.is_file():
        lines += [
            "## The paper's Table 2 on this dataset",
            "",
            "Mean AP (VOC2007 11-point) of every scorer on the same split; the last column is "
            "the paper's on VOC2007 test, for reference (not measured here).",
            "",
            table.read_text().strip(),
            "",
            *_image(out, ablation / "ablation.png", "ablation"),
        ]
    run = out / "run"
    evaluated = stages.get("evaluate") or {}
    summary = evaluated.get("summary") or {}
    lines += ["## Fine-tuning", ""]
    trained = (stages.get("train") or {}).get("summary") or {}
    if trained.get("best"):
        best = trained["best"]
        lines.append(
            f"Best epoch {best.get('epoch')}: val loss {best.get('val_loss', float('nan')):.4f}, "
            f"val accuracy {best.get('val_acc', float('nan')):.4f}."
        )
        lines.append("")
    if summary.get("report"):
        lines += ["Every validation region, best checkpoint:", "", "```", summary["report"], "```",
                  ""]  # fmt: skip
    lines += _image(out, run / "curves.png", "training curves")
    lines += [
        "## Stages",
        "",
        "| stage | time | peak memory (this process) | peak GPU memory | finished |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, record in stages.items():
        if not record:
            continue
        lines.append(
            f"| {name}: {record.get('title', '')} | {_duration(record.get('seconds', 0))} "
            f"| {record.get('peak_rss_mb', 0):,.0f} MB | {record.get('peak_gpu_mb', 0):,.0f} MB "
            f"| {record.get('finished', '')} |"
        )
    lines += [
        "",
        f"This run of the pipeline: {_duration(seconds)} (stages up to date are not run "
        "again).",
        "",
        "## Using it",
        "",
        "```bash",
        f"rcnn detect {run} IMAGES... --out pictures --scorer svm --bbox-reg {run / 'bbox'}",
        "```",
        "",
        "```python",
        "from rcnn import Detector",
        f'det = Detector.load("{run}", scorer="svm", bbox_reg=True)',
        'result = det("street.jpg")',
        "```",
        "",
        "Files: " + ", ".join(x for x in [
            _link(out, run, "the run"), _link(out, out / "evaluate", "region metrics"),
            _link(out, ablation, "detections and metrics of every scorer"),
            _link(out, run / "svm", "SVMs"), _link(out, run / "bbox", "box regressors"),
        ] if x) + ".",
    ]  # fmt: skip
    path = out / "report.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
