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
import math
import threading

import torch

from rcnn.evaluation.predict import Predictions


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
