"""Multi-process training with torchrun and DistributedDataParallel.

``torchrun --nproc_per_node=G -m rcnn train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; every process then trains one shard of the same balanced batch plan (see
:class:`rcnn.data.sampler.BalancedBatchSampler`), validates one shard of the validation batches, and
the shards' results are combined exactly: sums of losses and counts, and the full list of
predictions for the ranking metrics. NCCL on GPUs, gloo on CPUs. Only rank 0 writes files.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def _group():
    """``torch.distributed`` while a process group is up, else ``None``; torch is not imported
    for this (a command that never started one, like a cached `prepare`, stays light)."""
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()  # one process, no torchrun


def init_world(device_name: str) -> tuple[World, str]:
    """Joins the process group when launched by torchrun; returns the world and the device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device_name
    import torch
    import torch.distributed as dist

    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(world.local_rank)
        device_name = f"cuda:{world.local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    if not dist.is_initialized():
        global _owned
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=collective_timeout())
        _owned = True
    return world, device_name


# Whether init_world started the process group, which shutdown() then ends. A group started
# by the caller (a script running several stages in one launch) is left for it to end:
# starting a group again in the same processes is not reliable.
_owned = False


TIMEOUT_ENV = "RCNN_DIST_TIMEOUT"
MAX_TIMEOUT = 1e6  # seconds (11.6 days): larger ones overflow the communication library


def collective_timeout() -> timedelta:
    """How long a process waits for the others at a collective before it stops with an error
    (``RCNN_DIST_TIMEOUT`` seconds; 30 minutes by default): a rank that died or hangs ends the
    run instead of leaving the others waiting for ever."""
    raw = os.environ.get(TIMEOUT_ENV, "1800")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT:  # NaN too
        from rcnn.errors import ConfigError

        raise ConfigError(
            f"{TIMEOUT_ENV}={raw!r}: must be a number of seconds in (0, {MAX_TIMEOUT:.0f}]"
        )
    return timedelta(seconds=seconds)


def local_processes() -> int:
    """How many processes torchrun started on this machine (1 without torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def all_gather(value) -> list:
    """Every rank's ``value`` (any picklable object), in rank order."""
    dist = _group()
    if dist is None:
        return [value]
    values: list = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def gather_to_main(value) -> list | None:
    """Every rank's ``value`` on rank 0, in rank order (``None`` on the other ranks)."""
    dist = _group()
    if dist is None:
        return [value]
    rank, size = dist.get_rank(), dist.get_world_size()
    values: list | None = [None] * size if rank == 0 else None
    dist.gather_object(value, values, dst=0)
    return values


ARGUMENTS = "started with other arguments than rank 0; start every process with the same command"
FILES = "reads other files than rank 0; every process must see the same files at the same paths"


def agree(world: World, value, what: str, how: str = ARGUMENTS) -> None:
    """Refuses to go on, on every rank, unless every rank holds the same ``value`` (the
    digest of its settings, or of what it read): ranks started with other arguments, or
    reading other files, would write mixed results. ``how`` says what differs."""
    if not world.enabled:
        return
    values = all_gather(value)
    differ = [rank for rank, v in enumerate(values) if v != values[0]]
    if differ:
        from rcnn.errors import ConfigError

        raise ConfigError(f"{what}: rank {', '.join(map(str, differ))} {how}")


def everywhere(world: World, fn, what: str):
    """``fn()`` on every rank. If it fails on any rank with an error a user can fix (a dataset
    or cache a machine cannot see), every rank raises one message naming each failed rank and
    its error, instead of the others waiting for it at the next collective."""
    from rcnn.errors import RcnnError

    value, failure, error = None, None, None
    try:
        value = fn()
    except (RcnnError, OSError) as err:
        failure, error = f"{err}", err
    if not world.enabled:
        if error is not None:
            raise error
        return value
    failures = [(rank, f) for rank, f in enumerate(all_gather(failure)) if f is not None]
    if failures:
        said = "; ".join(f"rank {rank}: {f}" for rank, f in failures)
        raise RcnnError(f"{what} failed on {len(failures)} of {world.size} processes: {said}")
    return value


def all_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Sums each tensor over all ranks (no-op without a process group)."""
    dist = _group()
    if dist is None:
        return list(values)
    out = []
    for value in values:
        value = value.clone()
        dist.all_reduce(value)
        out.append(value)
    return out


def all_concat(array: np.ndarray) -> np.ndarray:
    """Concatenates every rank's array in rank order (no-op without a process group)."""
    dist = _group()
    if dist is None:
        return array
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate([p for p in parts if len(p)])  # a rank may have had no batch


def rank_zero_first(world: World, fn) -> None:
    """Calls ``fn()`` on rank 0 alone and tells every rank how it went: an error a user can
    fix (a locked or refused output folder) is raised on every rank with the same message,
    where the other ranks would otherwise wait for rank 0 at their next collective and end
    in a communication traceback."""
    from rcnn.errors import RcnnError

    failure = None
    if world.is_main:
        try:
            fn()
        except (RcnnError, OSError) as err:
            failure = err
    dist = _group()
    if world.enabled and dist is not None:
        message = [None if failure is None else str(failure)]
        dist.broadcast_object_list(message, src=0)
        if message[0] is not None and failure is None:
            raise RcnnError(message[0])
    if failure is not None:
        raise failure


def broadcast(value):
    """Rank 0's ``value`` on every rank (``value`` itself without a process group)."""
    dist = _group()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def in_group() -> bool:
    """Whether this process is in a process group already (an outer stage started it)."""
    return _group() is not None


def barrier() -> None:
    dist = _group()
    if dist is not None:
        dist.barrier()


def shutdown() -> None:
    """Ends the process group that :func:`init_world` started (not one the caller did)."""
    global _owned
    dist = _group()
    if dist is not None and _owned:
        dist.destroy_process_group()
        _owned = False
