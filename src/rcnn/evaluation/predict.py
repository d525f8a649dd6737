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


@torch.no_grad()
def predict(model, feeder, amp=False, progress=True, desc="val"):
    """Softmax probabilities, labels and summed cross-entropy over every batch of a feeder;
    under torchrun, of every rank's batches together."""
    model.eval()
    device = next(model.parameters()).device
    probs, labels = [], []
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for images, target in progress_bar(feeder, progress, desc=desc, leave=False):
        with autocast(device, amp):
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
        # Kept on the device until the end: a copy to the host per batch would wait for the GPU.
        probs.append(logits.softmax(1))
        labels.append(target)
    probs = torch.cat(probs).cpu().numpy() if probs else np.zeros((0, 0), np.float32)
    labels = torch.cat(labels).cpu().numpy() if labels else np.zeros(0, np.int64)
    (loss_sum,) = all_sum(loss_sum)  # exact totals over the ranks' shards
    return all_concat(probs), all_concat(labels), loss_sum.item()


def evaluate(model, feeder, class_names, amp=False, progress=True) -> dict:
    """Loss and every classification metric over the whole feeder, deterministically."""
    probs, labels, loss_sum = predict(model, feeder, amp, progress)
    metrics = classification_metrics(probs, labels, class_names)
    metrics["loss"] = loss_sum / len(labels)
    return metrics
