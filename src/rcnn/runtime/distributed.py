"""Multi-process training with torchrun and DistributedDataParallel.

``torchrun --nproc_per_node=G -m rcnn train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; every process then trains one shard of the same balanced batch plan (see
:class:`rcnn.data.sampler.BalancedBatchSampler`), validates one shard of the validation batches, and
the shards' results are combined exactly: sums of losses and counts, and the full list of
predictions for the ranking metrics. NCCL on GPUs, gloo on CPUs. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


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


def init_world(device_name: str) -> tuple[World, str]:
    """Joins the process group when launched by torchrun; returns the world and the device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device_name
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(world.local_rank)
        device_name = f"cuda:{world.local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return world, device_name


def all_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Sums each tensor over all ranks (no-op without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    out = []
    for value in values:
        value = value.clone()
        dist.all_reduce(value)
        out.append(value)
    return out


def all_concat(array: np.ndarray) -> np.ndarray:
    """Concatenates every rank's array in rank order (no-op without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
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
    if world.enabled and dist.is_initialized():
        message = [None if failure is None else str(failure)]
        dist.broadcast_object_list(message, src=0)
        if message[0] is not None and failure is None:
            raise RcnnError(message[0])
    if failure is not None:
        raise failure


def broadcast(value):
    """Rank 0's ``value`` on every rank (``value`` itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
