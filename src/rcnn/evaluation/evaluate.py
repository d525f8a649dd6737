"""``rcnn evaluate`` (a checkpoint on a region set) and ``rcnn compare`` (runs side by side)."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from rcnn.data.annotations import check_split_name
from rcnn.data.feeders import chunks, make_feeder
from rcnn.data.regions import load_split
from rcnn.data.warps import ImageStore, RegionDataset, mean_fill
from rcnn.evaluation.metrics import classification_metrics, format_metrics, pr_curves
from rcnn.evaluation.plots import figure_format, plot_compare, plot_pr, plot_predictions
from rcnn.evaluation.predict import predict
from rcnn.files import DamagedFileError, atomic_write_json, read_regular_file
from rcnn.modeling.checkpoint import CheckpointError, checkpoint_path, load_model
from rcnn.runtime.allocator import reuse_freed_memory
from rcnn.runtime.config import InferenceConfig
from rcnn.runtime.stage import run_stage

logger = logging.getLogger(__name__)


def run_evaluate(
    checkpoint: str,
    data: str,
    split: str = "val",
    out: str | None = None,
    classes: list[str] | None = None,
    inference: InferenceConfig | None = None,
    progress: bool = True,
) -> dict | None:
    """Every metric of a checkpoint on a region set; writes metrics.json, pr.png, examples.png.
    Precision and batch are this machine's choice (``inference``), not the training one's;
    ``classes`` are needed for a plain state dict (model.pth). Under torchrun each process
    scores a contiguous share of the regions; rank 0 writes and returns the metrics (the
    others ``None``)."""
    check_split_name(split)
    inference = inference or InferenceConfig()
    path = checkpoint_path(checkpoint, default="best.pt")
    settings = {"model": str(path), "data": str(data), "split": split, "out": out,
                "classes": classes, "inference": inference}  # fmt: skip
    with run_stage("rcnn evaluate", inference.device, settings) as stage:
        loaded = stage.everywhere(lambda: load_model(path, classes), str(path))
        stage.agree(loaded.digest, f"the weights of {path}")
        out_dir = stage.claim(out if out else path.parent / f"eval-{split}")  # before the work
        regions = stage.everywhere(lambda: load_split(data, split, allow_store=True), str(data))
        if regions.classes != loaded.classes:
            raise CheckpointError(
                f"{path} was trained for classes {loaded.classes} but {data} has {regions.classes}"
            )
        class_names = ["background", *regions.classes]
        device, inference, model = loaded.for_inference(replace(inference, device=stage.device))
        warp = loaded.spec.warp()
        store = ImageStore.of(regions, inference.threads)
        world = stage.world
        share = np.array_split(np.arange(len(regions)), world.size)[world.rank]  # in order
        batches = chunks(share, inference.batch)
        feeder = make_feeder(regions, batches, warp, device, workers=inference.threads,
                             store=store)  # fmt: skip
        with reuse_freed_memory(enabled=device.type == "cpu"):
            probs, labels, loss_sum = predict(model, feeder, inference.amp, progress)
        if not world.is_main:
            return None
        metrics = classification_metrics(probs, labels, class_names)
        metrics["loss"] = loss_sum / len(labels)
        metrics["checkpoint"], metrics["data"] = str(path), str(data)
        atomic_write_json(out_dir / "metrics.json", metrics)
        plot_pr(
            pr_curves(probs, labels, class_names),
            out_dir / "pr.png",
            title=f"Precision-recall on {split} ({len(labels)} regions)",
        )
        dataset = RegionDataset(regions, store, warp.size, warp.pad, mean_fill(warp.mean))
        write_examples(dataset, probs, labels, class_names, out_dir / "examples.png")
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
