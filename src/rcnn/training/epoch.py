"""One epoch of a run: its seeded training pass, its validation, its history row and the
files that record it (``last.pt``, ``best.pt``/``model.pth``, ``metrics.csv``, the curves).

``train_one_epoch`` is a free function over a feeder that returns numbers, as in
torchvision's references; the others give it what a resumable run needs.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from rcnn.errors import RcnnError
from rcnn.evaluation.predict import metrics_of, predict
from rcnn.files import atomic_write_bytes, atomic_write_json
from rcnn.modeling.checkpoint import checkpoint_record, link_atomic, save_checkpoint
from rcnn.progress import progress_bar
from rcnn.runtime.distributed import all_sum
from rcnn.training.config import TrainConfig
from rcnn.training.run import Run
from rcnn.training.steps import EagerStep


class TrainingDiverged(RcnnError):
    """The loss became NaN or infinite (usually a too high --lr); the last good checkpoint
    is kept."""


def diverged(cfg: TrainConfig, epoch: int, err: TrainingDiverged) -> TrainingDiverged:
    kept = f"{cfg.out}/last.pt keeps epoch {epoch - 1}" if epoch else "nothing was saved"
    return TrainingDiverged(f"epoch {epoch}: {err}; {kept}; try a lower --lr")


def train_one_epoch(
    model,
    feeder,
    optimizer,
    generator,
    amp=False,
    progress=True,
    desc="train",
    step: EagerStep | None = None,
    alongside=None,
) -> dict:
    """One pass over the feeder's (normalized) batches; returns mean loss and accuracy.

    ``step`` runs each batch (an :class:`EagerStep` of ``model`` when not given);
    ``alongside(i, n)``, when given, is called after the i-th of the n steps (validation of
    the previous epoch runs there)."""
    model.train()
    device = next(model.parameters()).device
    step = step or EagerStep(model, optimizer, amp)
    step.reset()
    batches = feeder.iterate(flips=generator)  # the recipe's random horizontal flip
    steps = len(feeder)
    bar = progress_bar(batches, progress, total=steps, desc=desc, leave=False)
    for i, (images, labels) in enumerate(bar):
        step(images, labels)
        if alongside is not None:
            alongside(i + 1, steps)
        if i % 50 == 0 and not torch.isfinite(step.loss_sum):  # a CPU-GPU sync; kept rare
            break
    loss_sum, correct, seen = step.sums()
    # Every rank's sums, so all ranks agree on the numbers and on stopping.
    loss_sum, correct, seen = all_sum(loss_sum, correct, torch.tensor(seen, device=device))
    if not torch.isfinite(loss_sum):
        raise TrainingDiverged("the training loss became NaN or infinite")
    seen = max(int(seen), 1)
    return {"loss": loss_sum.item() / seen, "acc": correct.item() / seen}


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def seeded_pass(cfg: TrainConfig, run: Run, epoch: int, alongside=None) -> dict:
    """Epoch ``epoch``'s training pass, seeded so that a resumed run repeats it exactly (its
    dropout, its batches and its flips)."""
    train_feeder, _, sampler = run.feeders
    rank = run.world.rank
    torch.manual_seed(epoch_seed(cfg.seed, epoch) + rank)  # dropout: same on resume
    sampler.set_epoch(epoch)
    flips = torch.Generator().manual_seed(epoch_seed(cfg.seed + 1, epoch) + rank)
    desc = f"epoch {epoch} train"
    return train_one_epoch(
        run.net, train_feeder, run.optimizer, flips, cfg.amp, cfg.progress, desc, run.step,
        alongside,
    )  # fmt: skip


def validate(cfg: TrainConfig, run: Run) -> tuple[dict, np.ndarray, np.ndarray]:
    """The metrics of the whole validation set (every rank's shard), with its probabilities
    and labels."""
    probs, labels, loss_sum = predict(run.net, run.feeders[1], cfg.amp, cfg.progress)
    return metrics_of(probs, labels, loss_sum, run.class_names), probs, labels


def history_row(epoch: int, lr: float, train: dict, val: dict, seconds: float) -> dict:
    return {
        "epoch": epoch,
        "lr": lr,
        "train_loss": train["loss"],
        "train_acc": train["acc"],
        "val_loss": val["loss"],
        "val_acc": val["accuracy"],
        "val_balanced_acc": val["balanced_accuracy"],
        "val_recipe_acc": val["recipe_accuracy"],
        "val_object_ap": val["object_ap"],
        "seconds": round(seconds, 2),
        "val_metrics": val,
    }


CSV_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_balanced_acc",
    "val_recipe_acc",
    "val_object_ap",
    "seconds",
)


def write_history(out: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(out / "metrics.csv", buf.getvalue().encode())
    from rcnn.evaluation.plots import plot_curves

    plot_curves(history, out / "curves.png")


def _better(metric: str, value: float, best: dict | None) -> bool:
    if best is None or best["value"] is None or math.isnan(best["value"]):
        return True
    return value < best["value"] if metric == "val_loss" else value > best["value"]


def mark_best(cfg: TrainConfig, run: Run, row: dict) -> bool:
    """Whether ``row`` is the best epoch so far (then recorded as ``run.best``)."""
    improved = _better(cfg.best_metric, row[cfg.best_metric], run.best)
    if improved:
        run.best = {"epoch": row["epoch"], "metric": cfg.best_metric, "value": row[cfg.best_metric]}
    return improved


def print_epoch(epoch: int, epochs: int, row: dict) -> None:
    print(f"Epoch {epoch}/{epochs - 1}")
    print("-" * 10)
    print(f"train Loss: {row['train_loss']:.4f} Acc: {row['train_acc']:.4f}")
    print(f"val Loss: {row['val_loss']:.4f} Acc: {row['val_acc']:.4f}")
    print(
        f"val balanced Acc: {row['val_balanced_acc']:.4f} recipe-mix Acc: "
        f"{row['val_recipe_acc']:.4f} AP: {row['val_object_ap']:.4f}"
    )
    print(flush=True)


def live_state(run: Run) -> dict:
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
    }


def write_epoch(cfg, run: Run, row, improved, state: dict, history: list, best: dict) -> None:
    """The files of the epoch of ``row``: ``state`` holds its model, optimizer and scheduler
    state, ``history`` and ``best`` the rows and best epoch up to it."""
    out = Path(cfg.out)
    config = run.requested or asdict(cfg)
    checkpoint = checkpoint_record(row["epoch"] + 1, config, run.class_names, state, history, best)
    save_checkpoint(out / "last.pt", checkpoint)
    atomic_write_json(out / "config.json", asdict(cfg))  # what was run, with the first epoch
    if improved:  # best.pt is then the same bytes: a hard link saves writing them again
        link_atomic(out / "last.pt", out / "best.pt")
        save_checkpoint(out / "model.pth", state["model"])
    write_history(out, history)


def record_epoch(cfg: TrainConfig, run: Run, row: dict, probs, labels, state=None, write=None):
    """Adds ``row`` to the run's history and, on rank 0, prints it, adds it to TensorBoard and
    writes the epoch's files: ``state()`` gives the model, optimizer and scheduler state to
    save (the live ones by default), ``write(job)`` runs the writing (now by default; the
    overlapped schedule hands it to a thread)."""
    run.history.append(row)
    improved = mark_best(cfg, run, row)
    if not run.world.is_main:
        return
    print_epoch(row["epoch"], cfg.epochs, row)
    if run.board is not None:
        run.board.write(row, probs, labels)
    state = state or (lambda: live_state(run))
    history, best = list(run.history), dict(run.best)

    def job() -> None:
        write_epoch(cfg, run, row, improved, state(), history, best)

    if write is None:
        job()
    else:
        write(job)
