"""``rcnn evaluate`` (a checkpoint on a region set) and ``rcnn compare`` (runs side by side)."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from rcnn.data.batches import chunks
from rcnn.data.dataset import ImageStore, RegionDataset, mean_fill
from rcnn.evaluation.metrics import classification_metrics, format_metrics, pr_curves
from rcnn.evaluation.plots import figure_format, plot_compare, plot_pr, plot_predictions
from rcnn.files import DamagedFileError, atomic_write_json, output_dir, read_regular_file
from rcnn.modeling.model import build_model
from rcnn.training.allocator import reuse_freed_memory
from rcnn.training.train import (
    TrainConfig,
    check_classes,
    checkpoint_path,
    config_from_checkpoint,
    for_device,
    input_stats,
    load_checkpoint,
    load_split,
    make_feeder,
    predict,
    resolve_device,
)

logger = logging.getLogger(__name__)


def load_model(ckpt: dict, cfg: TrainConfig, device: torch.device):
    model = build_model(cfg.backbone, len(ckpt["classes"]), weights="none")
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def run_evaluate(
    checkpoint: str,
    data: str,
    split: str = "val",
    out: str | None = None,
    device: str = "auto",
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Every metric of a checkpoint on a region set; writes metrics.json, pr.png, examples.png."""
    path = checkpoint_path(checkpoint, default="best.pt")
    ckpt = load_checkpoint(path)
    out_dir = output_dir(out if out else path.parent / f"eval-{split}")  # before the work
    dev = resolve_device(device)
    # Precision and batch size are this machine's choice, not the training machine's.
    cfg = replace(config_from_checkpoint(ckpt), workers=workers, amp=None, val_batch=0)
    cfg = for_device(cfg, dev)
    regions = load_split(data, split, allow_store=True)
    class_names = ["background", *regions.classes]
    check_classes(ckpt, class_names, path)
    mean, std = input_stats(cfg)
    store = ImageStore.of(regions)
    batches = chunks(np.arange(len(regions)), cfg.val_batch)
    feeder = make_feeder(regions, batches, cfg, dev, mean, std, store)
    model = load_model(ckpt, cfg, dev)
    with reuse_freed_memory(enabled=dev.type == "cpu"):
        probs, labels, loss_sum = predict(model, feeder, cfg.amp, progress)
    metrics = classification_metrics(probs, labels, class_names)
    metrics["loss"] = loss_sum / len(labels)
    metrics["checkpoint"], metrics["data"] = str(path), str(data)
    atomic_write_json(out_dir / "metrics.json", metrics)
    plot_pr(
        pr_curves(probs, labels, class_names),
        out_dir / "pr.png",
        title=f"Precision-recall on {split} ({len(labels)} regions)",
    )
    dataset = RegionDataset(regions, store, cfg.input_size, cfg.context_pad, mean_fill(mean))
    write_examples(dataset, probs, labels, class_names, out_dir / "examples.png", seed=cfg.seed)
    metrics["report"] = format_metrics(metrics, class_names)
    metrics["out"] = str(out_dir)
    return metrics


def write_examples(dataset, probs, labels, class_names, path, count: int = 24, seed: int = 0):
    """A grid of validation regions, half objects and half background, with predictions."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels > 0), np.flatnonzero(labels == 0)
    picks = np.concatenate([rng.permutation(pos)[: count // 2], rng.permutation(neg)[: count // 2]])
    crops = [dataset[int(i)][0].permute(1, 2, 0).numpy() for i in picks]
    preds = probs[picks].argmax(1)
    scores = probs[picks, preds]
    plot_predictions(
        crops, labels[picks].tolist(), preds.tolist(), scores.tolist(), class_names, path
    )


def read_history(run: str | Path) -> list[dict]:
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run} is not a run folder of `rcnn train`")
    try:
        rows = list(csv.DictReader(io.StringIO(read_regular_file(path).decode("utf-8"))))
        history = [
            {k: (float(v) if v not in ("", None) else None) for k, v in r.items()} for r in rows
        ]
    except (ValueError, TypeError, csv.Error) as err:  # UnicodeDecodeError is a ValueError
        raise DamagedFileError(f"{path}: not a metrics table of `rcnn train` ({err})") from None
    if not history or "epoch" not in history[0]:
        raise DamagedFileError(f"{path}: no epoch in it (not a metrics table of `rcnn train`)")
    return history


def run_names(runs: list[str]) -> list[str]:
    """Short unique labels: folder names, else full paths, else numbered."""
    for names in ([Path(r).name for r in runs], [str(r) for r in runs]):
        if len(set(names)) == len(names):
            return names
    return [f"{r} ({i + 1})" for i, r in enumerate(runs)]


def run_compare(runs: list[str], out: str, metric: str = "val_balanced_acc") -> str:
    """Overlays the runs' curves in ``out`` and returns a table of their best epochs."""
    figure_format(out)  # a figure file it can write, before reading anything
    histories = dict(zip(run_names(runs), (read_history(r) for r in runs), strict=True))
    plot_compare(histories, out, metric=metric)
    header = f"{'run':<24}{'best epoch':>11}{metric:>18}{'val_acc':>9}{'val_loss':>10}"
    lines = [header]
    for name, history in histories.items():
        scored = [r for r in history if r.get(metric) is not None]
        if not scored:
            lines.append(f"{name:<24}{'-':>11}")
            continue
        best = max(scored, key=lambda r: r[metric])
        other = [best.get(k) for k in ("val_acc", "val_loss")]
        other = [f"{v:>9.4f}" if v is not None else f"{'-':>9}" for v in other]
        lines.append(f"{name:<24}{int(best['epoch']):>11}{best[metric]:>18.4f}{''.join(other)}")
    return "\n".join(lines)
