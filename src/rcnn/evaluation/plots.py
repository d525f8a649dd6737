"""PNG plots of training curves, precision-recall curves, run comparisons and predictions.

Figures are built with :class:`matplotlib.figure.Figure` and rendered by the Agg backend.
Not going through ``pyplot`` means no display is needed, importing this module does not change
the process-wide backend (a notebook user keeps theirs), and no figure stays registered in
pyplot's global list, so nothing leaks across calls. Each PNG is written atomically.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rcnn.errors import ConfigError
from rcnn.evaluation.metrics import PRCurve
from rcnn.files import atomic_write_bytes

logger = logging.getLogger(__name__)

DPI = 100
CORRECT_COLOR = "tab:green"
WRONG_COLOR = "tab:red"


def plot_curves(history: list[dict], path: str | Path) -> None:
    """Loss and accuracy over epochs of one run.

    Args:
        history (list[dict]): one row per epoch with keys ``epoch``, ``train_loss``,
            ``train_acc``, ``val_loss``, ``val_acc``, ``val_balanced_acc``; missing keys and
            None values are left out of the plot.
        path: PNG file to write.
    """
    epochs = _epochs(history)
    fig = Figure(figsize=(11, 4.2), dpi=DPI, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        _plot_series(loss_ax, epochs, _column(history, key), label=label)
    for key, label in (
        ("train_acc", "train acc"),
        ("val_acc", "val acc"),
        ("val_balanced_acc", "val balanced acc"),
    ):
        _plot_series(acc_ax, epochs, _column(history, key), label=label)
    _decorate(loss_ax, "Loss", "loss")
    _decorate(acc_ax, "Accuracy", "accuracy")
    fig.suptitle(f"Training curves ({len(history)} epochs)")
    save_figure(fig, path)


def plot_pr(curves: dict[str, PRCurve], path: str | Path, title: str = "Precision-recall") -> None:
    """Precision-recall curve of each class in one panel (region classification).

    Args:
        curves (dict): class name -> :class:`PRCurve`, as from
            :func:`rcnn.evaluation.metrics.pr_curves`.
        path: PNG file to write.
        title (str): figure title.
    """
    fig = Figure(figsize=(5.5, 5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for name, (recall, precision, ap) in curves.items():
        if len(recall) == 0 or np.isnan(recall).all():
            logger.info("no positive %s region; its PR curve is left out", name)
            continue
        ap_text = "n/a" if ap is None or math.isnan(ap) else f"{ap:.3f}"
        # Steps from recall 0 at the first precision: the area under the drawn curve is the AP.
        ax.plot(
            np.r_[0.0, recall],
            np.r_[precision[0], precision],
            drawstyle="steps-pre",
            label=f"{name} (AP {ap_text})",
        )
    ax.set_xlim(0.0, 1.02)
    ax.set_ylim(0.0, 1.02)
    _decorate(ax, title, "precision", xlabel="recall")
    save_figure(fig, path)


def plot_pr_grid(
    curves: dict[str, PRCurve], path: str | Path, title: str = "Precision-recall"
) -> None:
    """One precision-recall panel per class, for detections.

    Args:
        curves (dict): class name -> :class:`PRCurve`, in order of decreasing score (as from
            :func:`rcnn.evaluation.voc_eval.evaluate_class`).
        path: PNG file to write.
        title (str): figure title.
    """
    fig, axes = _grid(len(curves), 4, (3.6, 3.3), extra_height=0.4)
    for ax, (name, (recall, precision, ap)) in zip(axes, curves.items(), strict=False):
        if len(recall):
            ax.plot(np.r_[0.0, recall], np.r_[precision[0], precision], drawstyle="steps-pre")
        else:
            ax.text(0.5, 0.5, "no detections", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0.0, 1.02)
        ax.set_ylim(0.0, 1.02)
        ax.set_title(f"{name} (AP {ap:.3f})", fontsize=10)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(alpha=0.3)
    for ax in axes[len(curves) :]:
        ax.set_axis_off()
    fig.suptitle(title)
    save_figure(fig, path)


def plot_images(
    images: list[np.ndarray], titles: list[str], path: str | Path, ncols=3, dpi: int = DPI
) -> None:
    """RGB images in a grid with a title each (e.g. test images with their detections), at
    ``dpi``."""
    fig, axes = _grid(len(images), ncols, (4, 3.3))
    for ax, image, title in zip(axes, images, titles, strict=False):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    save_figure(fig, path, dpi)


def plot_compare(
    histories: dict[str, list[dict]], path: str | Path, metric: str = "val_balanced_acc"
) -> None:
    """Several runs overlaid: val loss, ``metric`` and train loss, best epoch marked by a dot.

    Args:
        histories (dict): run name -> history rows as for :func:`plot_curves`.
        path: PNG file to write.
        metric (str): history key whose maximum picks each run's best epoch.
    """
    fig = Figure(figsize=(15, 4.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    keys = ("val_loss", metric, "train_loss")
    for i, (run, history) in enumerate(histories.items()):
        color = f"C{i % 10}"  # one color per run across the three panels
        epochs = _epochs(history)
        score = _column(history, metric)
        best = int(np.nanargmax(score)) if np.isfinite(score).any() else None
        for ax, key in zip(axes, keys, strict=True):
            values = _column(history, key)
            _plot_series(ax, epochs, values, label=run, color=color)
            if best is not None and np.isfinite(values[best]):
                ax.plot(epochs[best], values[best], "o", color=color, markersize=8, zorder=3)
    for ax, key in zip(axes, keys, strict=True):
        _decorate(ax, key, key)
    fig.suptitle(f"Runs compared; dot = best epoch by {metric}")
    save_figure(fig, path)


def plot_predictions(
    crops: list[np.ndarray],
    labels: list[int],
    preds: list[int],
    scores: list[float],
    class_names: list[str],
    path: str | Path,
    ncols: int = 8,
) -> None:
    """A grid of region crops titled with prediction and truth, green if right, red if wrong.

    Args:
        crops (list[ndarray[H, W, 3]]): RGB uint8 crops of any sizes (``[H, W]`` gray also works).
        labels (list[int]): true class of each crop.
        preds (list[int]): predicted class of each crop.
        scores (list[float]): probability of the predicted class.
        class_names (list[str]): all names, background first.
        path: PNG file to write.
        ncols (int): crops per row.
    """
    n = len(crops)
    if not (len(labels) == len(preds) == len(scores) == n):
        raise ValueError(
            f"crops, labels, preds and scores must have equal lengths, got "
            f"{n}, {len(labels)}, {len(preds)}, {len(scores)}"
        )
    if n == 0:
        raise ValueError("no crops to plot")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(1.9 * ncols, 2.1 * nrows), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_axis_off()
    for ax, crop, label, pred, score in zip(axes[:n], crops, labels, preds, scores, strict=True):
        crop = np.asarray(crop)
        ax.imshow(crop, cmap="gray" if crop.ndim == 2 else None, interpolation="nearest")
        title, color = prediction_title(label, pred, score, class_names)
        ax.set_title(title, color=color, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, path)


def prediction_title(
    label: int, pred: int, score: float, class_names: list[str]
) -> tuple[str, str]:
    """Title ``"pred car 0.93 / true bg"`` and its color (green if correct, red if wrong)."""
    pred_name, true_name = _short_name(pred, class_names), _short_name(label, class_names)
    color = CORRECT_COLOR if int(label) == int(pred) else WRONG_COLOR
    return f"pred {pred_name} {score:.2f} / true {true_name}", color


def _short_name(index: int, class_names: list[str]) -> str:
    # Grid cells are narrow; "background" would crowd the title.
    return "bg" if int(index) == 0 else class_names[int(index)]


def _epochs(history: list[dict]) -> np.ndarray:
    """Epoch of each row; rows without one are numbered from 1 by position."""
    return np.array(
        [
            row.get("epoch") if row.get("epoch") is not None else i + 1
            for i, row in enumerate(history)
        ],
        dtype=np.float64,
    )


def _column(history: list[dict], key: str) -> np.ndarray:
    """``history[i][key]`` as float64, NaN where missing or None."""
    values = [row.get(key) for row in history]
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _plot_series(
    ax: Axes, x: np.ndarray, y: np.ndarray, label: str, color: str | None = None
) -> None:
    """Plots the finite points of ``y``, if any."""
    keep = np.isfinite(y)
    if keep.any():
        # Markers keep a one-epoch history visible; a line needs two points.
        ax.plot(x[keep], y[keep], marker=".", label=label, color=color)


def _decorate(ax: Axes, title: str, ylabel: str, xlabel: str = "epoch") -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if xlabel == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _grid(count: int, max_cols: int, cell: tuple[float, float], extra_height: float = 0.0):
    """A figure of ``count`` panels, at most ``max_cols`` a row; returns it and the flat axes."""
    ncols = min(max_cols, max(1, count))
    nrows = math.ceil(count / ncols)
    size = (cell[0] * ncols, cell[1] * nrows + extra_height)
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False).ravel()


FORMATS = ("png", "pdf", "svg")  # by the file's suffix


def figure_format(path: str | Path) -> str:
    """The format a figure file is written in, by its suffix (a user may ask for ``.pdf``)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ConfigError(f"{path}: a figure is written as {', '.join('.' + f for f in FORMATS)}")
    return suffix


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> None:
    """Writes ``fig`` to ``path`` (PNG, PDF or SVG by its suffix) at ``dpi``, atomically:
    rendered to memory first, so the file on disk is replaced in one step, never half-written."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=figure_format(path), dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
    logger.debug("wrote %s", path)
