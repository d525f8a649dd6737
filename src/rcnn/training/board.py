"""``rcnn train --tensorboard``: TensorBoard event files of a run, one step an epoch.

Written to ``RUN/tensorboard/`` by rank 0 with ``torch.utils.tensorboard`` (the optional
``tensorboard`` package): the losses, accuracies and object AP of the history row, the
learning rate, each class's AP, and the validation precision-recall curves (object vs
background, and each class against the rest). A resumed run drops the events of the epochs
it trains again, so each epoch is shown once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rcnn.errors import ConfigError

FOLDER = "tensorboard"
INSTALL = "pip install 'rcnn[tensorboard]' (or pip install tensorboard)"
SCALARS = {
    "loss/train": "train_loss",
    "loss/val": "val_loss",
    "accuracy/train": "train_acc",
    "accuracy/val": "val_acc",
    "accuracy/val_balanced": "val_balanced_acc",
    "accuracy/val_recipe_mix": "val_recipe_acc",
    "ap/val_object": "val_object_ap",
    "lr": "lr",
}


def summary_writer():
    """``SummaryWriter``, or a :class:`ConfigError` saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ConfigError(
            f"--tensorboard needs the tensorboard package: {INSTALL} ({err})"
        ) from None
    return SummaryWriter


class Board:
    """The event files of one run; ``first_epoch`` is where this process starts."""

    def __init__(self, run: str | Path, class_names: list[str], first_epoch: int = 0):
        self.folder = Path(run) / FOLDER
        self.class_names = class_names
        self.writer = summary_writer()(log_dir=str(self.folder), purge_step=first_epoch)

    def write(self, row: dict, probs: np.ndarray, labels: np.ndarray) -> None:
        """The epoch of ``row`` (a history row) and its validation predictions (softmax
        ``probs [N, C]``, background first, and ``labels [N]``)."""
        step = row["epoch"]
        for tag, key in SCALARS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], step)
        for name, ap in row["val_metrics"].get("ap", {}).items():
            if ap is not None:
                self.writer.add_scalar(f"ap/val_{name}", ap, step)
        probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
        if len(labels):
            self.writer.add_pr_curve("pr/object", labels != 0, 1.0 - probs[:, 0], step)
            if len(self.class_names) > 2:  # with one class, the same curve as the object's
                for k, name in enumerate(self.class_names[1:], start=1):
                    self.writer.add_pr_curve(f"pr/{name}", labels == k, probs[:, k], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
