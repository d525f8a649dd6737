"""``rcnn ablate``: the R-CNN paper's Table 2 for one dataset.

The fine-tuned network's own softmax, the per-class SVMs on its fc7 features, and the SVMs
with bounding-box regression, scored by ``rcnn test``'s rules on the same split, from one
forward pass per image (the three share proposals, warps and features). Writes each variant's
result files and metrics to ``OUT/{softmax,svm,svm-bbox}/``, and ``OUT/ablation.json``,
``OUT/ablation.md`` and ``OUT/ablation.png`` (per-class AP side by side).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rcnn.detection.config import Variant
from rcnn.detection.testing import TestConfig, run_test
from rcnn.files import atomic_write_bytes, atomic_write_json

VARIANTS = [
    Variant("softmax", "softmax", bbox_reg=False),
    Variant("svm", "svm", bbox_reg=False),
    Variant("svm-bbox", "svm", bbox_reg=True),
]
TITLES = {
    "softmax": "fine-tuned softmax",
    "svm": "fine-tuned fc7 + SVM",
    "svm-bbox": "SVM + box regression",
}


def run_ablation(cfg: TestConfig) -> dict:
    """Runs the three variants; returns ``{"variants": {name: metrics}, "table": markdown}``."""
    results = run_test(replace(cfg, variants=VARIANTS))
    if not results:  # a torchrun process other than rank 0
        return {}
    out = Path(cfg.out)
    table = format_table(results)
    atomic_write_bytes(out / "ablation.md", (table + "\n").encode())
    summary = {
        name: {
            "map_07": m["map_07"],
            "map": m["map"],
            "map_07_strict": m["map_07_strict"],
            "ap_07": {c: v["ap_07"] for c, v in m["classes"].items()},
            "ap": {c: v["ap"] for c, v in m["classes"].items()},
        }
        for name, m in results.items()
    }
    atomic_write_json(out / "ablation.json", summary)
    plot_ablation(summary, out / "ablation.png", cfg.split)
    return {"variants": results, "table": table, "out": str(out)}


def format_table(results: dict) -> str:
    """Markdown: one row per variant, VOC2007 11-point AP per class, both mAPs, and the
    11-point mAP when a detection must overlap its object by more than 0.7."""
    classes = list(next(iter(results.values()))["classes"])
    head = ["variant", *classes, "mAP (07)", "mAP (area)", "mAP (07) at IoU 0.7"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, m in results.items():
        cells = [f"{m['classes'][c]['ap_07']:.3f}" for c in classes]
        row = [TITLES.get(name, name), *cells, f"{m['map_07']:.3f}", f"{m['map']:.3f}",
               f"{m['map_07_strict']:.3f}"]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_ablation(summary: dict, path: Path, split: str) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    from rcnn.evaluation.plots import DPI, save_figure

    names = list(summary)
    classes = list(next(iter(summary.values()))["ap_07"])
    groups = [*classes, "mean"]
    fig = Figure(figsize=(max(5.0, 1.1 * len(groups) + 2), 4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(names)
    x = np.arange(len(groups))
    for i, name in enumerate(names):
        values = [summary[name]["ap_07"][c] for c in classes] + [summary[name]["map_07"]]
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=TITLES[name])
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, groups, rotation=45 if len(groups) > 6 else 0)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AP (VOC2007 11-point)")
    ax.set_title(f"R-CNN ablation on the {split} split")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(names))
    save_figure(fig, path)
