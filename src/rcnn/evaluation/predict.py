"""A network's predictions over every batch of a feeder, and the metrics of them: what
validation during training and `rcnn evaluate` share."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rcnn.evaluation.metrics import classification_metrics
from rcnn.progress import progress_bar
from rcnn.runtime.device import autocast
from rcnn.runtime.distributed import all_concat, all_sum


class Predictions:
    """Softmax probabilities, labels and summed cross-entropy gathered batch by batch, kept on
    the device until :meth:`result` (a copy to the host per batch would wait for the GPU)."""

    def __init__(self, model, amp=False):
        self.model, self.amp = model, amp
        self.device = next(model.parameters()).device
        self.probs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)

    @torch.no_grad()
    def add(self, images: torch.Tensor, target: torch.Tensor) -> None:
        with autocast(self.device, self.amp):
            logits = self.model(images).float()
        self.loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
        self.probs.append(logits.softmax(1))
        self.labels.append(target)

    def result(self):
        """``(probs, labels, loss_sum)``; under torchrun, of every rank's batches together."""
        probs = torch.cat(self.probs).cpu().numpy() if self.probs else np.zeros((0, 0), np.float32)
        labels = torch.cat(self.labels).cpu().numpy() if self.labels else np.zeros(0, np.int64)
        (loss_sum,) = all_sum(self.loss_sum)  # exact totals over the ranks' shards
        return all_concat(probs), all_concat(labels), loss_sum.item()


def predict(model, feeder, amp=False, progress=True, desc="val"):
    """Softmax probabilities, labels and summed cross-entropy over every batch of a feeder;
    under torchrun, of every rank's batches together."""
    model.eval()
    found = Predictions(model, amp)
    for images, target in progress_bar(feeder, progress, desc=desc, leave=False):
        found.add(images, target)
    return found.result()


def metrics_of(probs, labels, loss_sum, class_names) -> dict:
    """Loss and every classification metric of :func:`predict`'s output."""
    metrics = classification_metrics(probs, labels, class_names)
    metrics["loss"] = loss_sum / len(labels)
    return metrics


def evaluate(model, feeder, class_names, amp=False, progress=True) -> dict:
    """Loss and every classification metric over the whole feeder, deterministically."""
    return metrics_of(*predict(model, feeder, amp, progress), class_names)
