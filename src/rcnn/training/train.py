"""``rcnn train``: fine-tune a classifier on warped regions with balanced 32 + 96 batches.

``run_train`` wires the run (:mod:`rcnn.training.run`) and its epochs
(:mod:`rcnn.training.epoch`), one after the other or each validated alongside the next
(:mod:`rcnn.training.overlap`), in the frame every stage runs in.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, replace
from pathlib import Path

from rcnn.errors import ConfigError
from rcnn.modeling.checkpoint import checkpoint_record, save_checkpoint
from rcnn.progress import minutes_seconds
from rcnn.runtime.allocator import reuse_freed_memory
from rcnn.runtime.device import configure_device, resolve_device
from rcnn.runtime.distributed import World, barrier
from rcnn.runtime.stage import run_stage
from rcnn.training.board import Board, summary_writer
from rcnn.training.config import TrainConfig
from rcnn.training.epoch import (
    TrainingDiverged,
    diverged,
    history_row,
    record_epoch,
    seeded_pass,
    validate,
)
from rcnn.training.overlap import train_overlapped
from rcnn.training.run import Run, claim_run_folder, for_device, setup_run


def run_train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict | None:
    """Trains (or resumes) a run in ``cfg.out``; returns the best epoch's history row.

    A new run refuses a folder that holds a run already, unless ``overwrite`` (which deletes
    that run's files first). Under torchrun every process calls this; rank 0 alone prints,
    writes files and returns the row (the others ``None``).
    """
    if cfg.tensorboard:
        summary_writer()  # missing: said before any file is touched, on every rank
    requested = asdict(cfg)
    settings = {**requested, "resume": resume, "overwrite": overwrite}
    with run_stage("rcnn train", cfg.device, settings) as stage:
        device = resolve_device(stage.device)
        configure_device(device)
        cfg = for_device(cfg, device, stage.world)
        if not stage.world.is_main:
            cfg = replace(cfg, progress=False)
        stage.claim(cfg.out, None if resume else lambda out: claim_run_folder(out, overwrite))
        best = _train(cfg, resume, stage.world, device, requested)
        return best if stage.world.is_main else None


def _train(cfg: TrainConfig, resume: bool, world: World, device, requested: dict) -> dict:
    run = setup_run(cfg, resume, world, device)
    run.requested = requested
    if not resume and world.is_main and cfg.weights != "imagenet":
        keep_initial(cfg, run)
    say = print if world.is_main else (lambda *a, **k: None)
    if run.first_epoch:
        if run.first_epoch >= cfg.epochs:
            raise ConfigError(
                f"--epochs {cfg.epochs}: {cfg.out} has already trained {run.first_epoch} "
                "epochs; pass a larger --epochs to continue it"
            )
        say(f"Resuming {cfg.out} after epoch {run.first_epoch - 1}")
    start = time.time()
    with contextlib.ExitStack() as stack, reuse_freed_memory(enabled=device.type == "cpu"):
        if cfg.tensorboard and world.is_main:
            run.board = Board(cfg.out, run.class_names, run.first_epoch)
            stack.callback(run.board.close)
        if cfg.overlap_val:
            train_overlapped(cfg, run)
        else:
            for epoch in range(run.first_epoch, cfg.epochs):
                train_epoch(cfg, run, epoch)
    barrier()
    best = run.best
    say(f"Training complete in {minutes_seconds(time.time() - start)}")
    say(f"Best val Acc: {max(r['val_acc'] for r in run.history):.6f}")
    say(
        f"Best val {best['metric'][4:]}: {best['value']:.6f} (epoch {best['epoch']}), "
        f"weights in {Path(cfg.out) / 'model.pth'}"
    )
    return next((r for r in run.history if r["epoch"] == best["epoch"]), run.history[-1])


def keep_initial(cfg: TrainConfig, run: Run) -> None:
    """``initial.pt``: the network before its first step, which the paper's Table 2 compares
    with the fine-tuned one (a run from ImageNet's weights finds them in torchvision)."""
    state = {"model": run.model.state_dict(), "optimizer": {}, "scheduler": {}}
    record = checkpoint_record(0, run.requested, run.class_names, state, [], None)
    save_checkpoint(Path(cfg.out) / "initial.pt", record)


def train_epoch(cfg: TrainConfig, run: Run, epoch: int) -> None:
    """Epoch ``epoch`` of ``run``: its training pass, its validation, the scheduler's step,
    and its row, log line and files."""
    start = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    try:
        train = seeded_pass(cfg, run, epoch)
    except TrainingDiverged as err:
        raise diverged(cfg, epoch, err) from err
    val, probs, labels = validate(cfg, run)
    run.scheduler.step()
    row = history_row(epoch, lr, train, val, time.perf_counter() - start)
    record_epoch(cfg, run, row, probs, labels)
