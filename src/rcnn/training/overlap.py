"""Validation of epoch N while epoch N+1 trains, and checkpoints written in the background.

Validating needs only a copy of epoch N's weights, so :class:`Snapshot` copies them (and the
optimizer's state, for the checkpoint) at the end of epoch N; :class:`PendingValidation` then
runs its batches in between epoch N+1's training steps, on a second CUDA stream of lower
priority that fills the GPU's idle time. The numbers are those of validating right after the
epoch: the copy is exact and validation draws no random numbers (on the CPU, where the two
interleave on one thread, they are bit-identical). :class:`Saver` writes each epoch's
checkpoint from a thread, so the GPU does not wait for the disk.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import threading
import time
from dataclasses import dataclass

import torch

from rcnn.evaluation.predict import Predictions, metrics_of
from rcnn.training.config import TrainConfig
from rcnn.training.epoch import (
    TrainingDiverged,
    diverged,
    history_row,
    record_epoch,
    seeded_pass,
)
from rcnn.training.run import Run

logger = logging.getLogger(__name__)


def map_tensors(obj, fn):
    """``obj`` (nested dicts, lists and tuples, as a state dict) rebuilt with ``fn`` applied to
    every tensor; other leaves (numbers, strings) are kept, being immutable there."""
    if isinstance(obj, torch.Tensor):
        return fn(obj.detach())
    if isinstance(obj, dict):
        return {key: map_tensors(value, fn) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(value, fn) for value in obj)
    return obj


def clone_tensors(obj):
    """A copy of a state dict whose tensors are cloned where they are (on the GPU, say)."""
    return map_tensors(obj, torch.clone)


def to_cpu(obj):
    """A copy of a state dict whose tensors are copied to host memory."""
    return map_tensors(obj, lambda tensor: tensor.to("cpu", copy=True))


def stream_context(stream):
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def new_stream(device: torch.device, high_priority: bool):
    """A CUDA stream (``None`` elsewhere): of the highest priority, or of the lowest."""
    if device.type != "cuda":
        return None
    lowest, highest = torch.cuda.Stream.priority_range()
    return torch.cuda.Stream(device, priority=highest if high_priority else lowest)


class Snapshot:
    """A copy of the model (in eval mode, for validating) and of the optimizer's and
    scheduler's state at the end of an epoch."""

    def __init__(self, model: torch.nn.Module):
        self.net = copy.deepcopy(model).eval()
        for param in self.net.parameters():
            param.requires_grad_(False)
        self.optimizer_state = self.scheduler_state = None
        self.epoch = -1
        self.ready = None  # a CUDA event after the copies

    @torch.no_grad()
    def take(self, epoch: int, model, optimizer, scheduler) -> None:
        """Copies on the current stream, after the epoch's last step in the same order."""
        theirs = model.state_dict()
        for name, mine in self.net.state_dict().items():
            mine.copy_(theirs[name])
        self.optimizer_state = clone_tensors(optimizer.state_dict())
        self.scheduler_state = copy.deepcopy(scheduler.state_dict())
        self.epoch = epoch
        device = next(model.parameters()).device
        if device.type == "cuda":
            self.ready = torch.cuda.Event()
            self.ready.record(torch.cuda.current_stream(device))

    def wait_on(self, stream) -> None:
        if stream is not None and self.ready is not None:
            stream.wait_event(self.ready)

    def state(self, stream=None) -> dict:
        """The model's, optimizer's and scheduler's state in host memory (copied on
        ``stream``, which first waits for the snapshot)."""
        self.wait_on(stream)
        with stream_context(stream):
            return {
                "model": to_cpu(self.net.state_dict()),
                "optimizer": to_cpu(self.optimizer_state),
                "scheduler": self.scheduler_state,
            }


class PendingValidation:
    """Validation of a snapshot, advanced a few batches at a time between training steps."""

    def __init__(self, snapshot: Snapshot, feeder, amp, stream=None):
        self.snapshot, self.stream = snapshot, stream
        self.total = len(feeder)
        snapshot.wait_on(stream)
        with stream_context(stream):  # its sums are made on the stream that adds to them
            self.found = Predictions(snapshot.net, amp)
        self.batches = iter(feeder)
        self.done = 0

    def advance(self, step: int, steps: int) -> None:
        """Runs the batches due after training step ``step`` of ``steps``: evenly spread."""
        self.run_until(math.ceil(self.total * step / max(steps, 1)))

    def run_until(self, count: int) -> None:
        with stream_context(self.stream):
            while self.done < min(count, self.total):
                self.found.add(*next(self.batches))
                self.done += 1

    def finish(self):
        """Runs what is left; returns :meth:`Predictions.result`."""
        self.run_until(self.total)
        with stream_context(self.stream):
            return self.found.result()


class Saver:
    """Runs one write job at a time on a thread; :meth:`join` waits for it and raises what it
    raised (a full disk, a removed folder) in the caller."""

    def __init__(self):
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def submit(self, job) -> None:
        self.join()

        def run():
            try:
                job()
            except BaseException as err:  # re-raised by join() in the training thread
                self.error = err

        self.thread = threading.Thread(target=run, name="rcnn-checkpoint", daemon=False)
        self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


@dataclass
class Pending:
    """An epoch trained, its validation under way."""

    epoch: int
    lr: float
    train: dict
    began: float  # time.perf_counter() when its training began
    validation: PendingValidation


def train_overlapped(cfg: TrainConfig, run: Run) -> None:
    """The epochs of ``run`` (one process), each validated while the next one trains.

    Epoch N's row, log and checkpoint come when epoch N+1's training ends; they hold what the
    plain order gives. Its ``seconds`` are the wall time from its training's start to the
    next one's (to the end of its validation for the last epoch)."""
    device = next(run.model.parameters()).device
    train_stream, val_stream = new_stream(device, True), new_stream(device, False)
    save_stream = new_stream(device, False)
    snapshots = [Snapshot(run.model), Snapshot(run.model)]
    saver, pending, finished = Saver(), None, False

    def publish(done: Pending, ended: float) -> None:
        probs, labels, loss_sum = done.validation.finish()
        val = metrics_of(probs, labels, loss_sum, run.class_names)
        row = history_row(done.epoch, done.lr, done.train, val, ended - done.began)
        snapshot = done.validation.snapshot
        record_epoch(cfg, run, row, probs, labels, lambda: snapshot.state(save_stream),
                     saver.submit)  # fmt: skip

    if train_stream is not None:
        train_stream.wait_stream(torch.cuda.current_stream(device))
    try:
        with stream_context(train_stream):
            for epoch in range(run.first_epoch, cfg.epochs):
                began = time.perf_counter()
                lr = run.optimizer.param_groups[0]["lr"]
                alongside = pending.validation.advance if pending else None
                try:
                    train = seeded_pass(cfg, run, epoch, alongside)
                except TrainingDiverged as err:
                    if pending:  # the epoch before was good: its files are written first
                        publish(pending, began)
                        saver.join()
                    raise diverged(cfg, epoch, err) from err
                if pending:
                    publish(pending, began)
                run.scheduler.step()
                # The other snapshot may still be read by the writer; this one was written
                # when the last checkpoint was submitted (a submit waits for the one before).
                snapshot = snapshots[epoch % 2]
                snapshot.take(epoch, run.model, run.optimizer, run.scheduler)
                validation = PendingValidation(snapshot, run.feeders[1], cfg.amp, val_stream)
                pending = Pending(epoch, lr, train, began, validation)
            if pending:
                publish(pending, time.perf_counter())
        finished = True
    finally:
        if train_stream is not None:
            torch.cuda.current_stream(device).wait_stream(train_stream)
        try:
            saver.join()
        except Exception:
            if finished:  # the run ended well but its files did not: say so
                raise
            logger.exception("writing a checkpoint failed too")
