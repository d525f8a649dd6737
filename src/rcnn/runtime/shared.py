"""Batches of work shared out among torchrun's processes, for the stages that compute
features: rank 0 runs the stage's own logic and asks for the results of a list of batches;
the other ranks serve, each computing its share, until rank 0 is done.

    shared = SharedWork(world, compute)        # compute(key, batches) -> a result a batch
    run_on_main(shared, lambda: stage(shared))  # on every rank; stage() runs on rank 0 alone

Inside ``stage``, ``shared.map(key, batches)`` yields the result of every batch, in order;
the batches are dealt out in rounds, ``group`` consecutive ones a rank (computed together:
one feeder for them), and each round's results are gathered to rank 0. An error a user can
fix, on any rank, ends every rank with one message naming each rank that failed. Without
torchrun, ``map`` computes in place.
"""

from __future__ import annotations

from functools import partial

from rcnn.errors import RcnnError
from rcnn.runtime.distributed import World, broadcast, everywhere, gather_to_main


class SharedWork:
    def __init__(self, world: World, compute, group: int = 4):
        self.world, self.compute, self.group = world, compute, group
        self.failed = False

    def map(self, key, batches: list):
        """The result of every batch, in order (rank 0, or one process)."""
        if not self.world.enabled:
            for start in range(0, len(batches), self.group):
                yield from self.compute(key, batches[start : start + self.group])
            return
        broadcast((key, batches))
        yield from self._rounds(key, batches)

    def _rounds(self, key, batches: list):
        size, rank, group = self.world.size, self.world.rank, self.group
        for start in range(0, len(batches), size * group):
            mine = batches[start + rank * group : start + (rank + 1) * group]
            try:  # every rank raises together when one fails
                work = partial(self.compute, key, mine) if mine else list  # a rank may idle
                results = everywhere(self.world, work, "a round")
            except RcnnError:
                self.failed = True
                raise
            parts = gather_to_main(results)
            if parts is not None:
                for part in parts:
                    yield from part

    def serve(self) -> None:
        """Computes this rank's share of every request of rank 0 until it closes."""
        while (request := broadcast(None)) is not None:
            for _ in self._rounds(*request):
                pass

    def close(self) -> None:
        if self.world.enabled and self.world.is_main:
            broadcast(None)


def run_on_main(shared: SharedWork, stage):
    """``stage()`` on rank 0 while the other ranks serve ``shared``; rank 0 gets its result,
    the others ``None``. A failure of ``stage`` ends every rank with its message."""
    world = shared.world
    if not world.enabled:
        return stage()
    if not world.is_main:
        shared.serve()  # raises, on every rank, what failed in a round
        message = broadcast(None)
        if message is not None:
            raise RcnnError(message)
        return None
    failure, result = None, None
    try:
        result = stage()
    except (RcnnError, OSError) as err:
        if shared.failed:  # every rank raised it already: nobody is listening
            raise
        failure = err
    except BaseException:
        if not shared.failed:
            shared.close()
            broadcast("rank 0 stopped (see its error)")
        raise
    shared.close()
    broadcast(None if failure is None else f"{failure}")
    if failure is not None:
        raise failure
    return result
