"""The frame every stage runs in, in one process or under torchrun:

    with run_stage("rcnn test", cfg.device, cfg) as stage:
        stage.claim(out, check)            # rank 0 takes OUT (lock, leftovers, check(out))
        model = stage.everywhere(load, "--model ...")
        stage.agree(model.digest, "the model")
        ...                                 # the work; rank 0 alone writes
        return result if stage.world.is_main else None

It joins the process group (when torchrun started the process), refuses ranks started with
other settings before any work, holds the output folder's lock for the whole stage, turns a
collective that timed out or lost a peer into one message, and ends the group in ``finally``.
The convention for ranks other than 0: they return ``None`` (rank 0 reports).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rcnn.errors import RcnnError
from rcnn.runtime.distributed import (
    FILES,
    TIMEOUT_ENV,
    World,
    agree,
    everywhere,
    in_group,
    init_world,
    rank_zero_first,
    shutdown,
)

# Settings that may differ between processes without changing what a stage computes: each
# machine's own cores, cache and terminal.
PER_PROCESS = frozenset({"progress", "workers", "threads", "cache_dir"})


def shared_settings(settings, drop=()) -> dict:
    """``settings`` (a dataclass or a dict, nested ones included) as JSON values, without the
    keys of :data:`PER_PROCESS` (nor those of ``drop``): what decides a stage's results, the
    same on every machine."""
    if dataclasses.is_dataclass(settings):
        settings = dataclasses.asdict(settings)
    dropped = PER_PROCESS | set(drop)

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in dropped}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(json.loads(json.dumps(settings, default=str)))


def settings_digest(settings) -> str:
    """A digest of :func:`shared_settings`: what every rank must have been given alike."""
    text = json.dumps(shared_settings(settings), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Stage:
    """What a running stage holds: its name, the processes, this process's device name."""

    command: str
    world: World
    device: str
    stack: contextlib.ExitStack

    def claim(self, out: str | Path, check=None) -> Path:
        """Rank 0 takes ``out``: creates it, holds its lock until the stage ends, removes the
        temporaries of interrupted writes, then calls ``check(out)`` (what the folder may hold).
        An error there stops every rank with its message. A folder it created is removed again
        when the stage fails before writing anything into it."""
        from rcnn.files import output_dir, output_lock, remove_temporaries

        out = Path(out)

        def forget(failed, *_) -> bool:  # runs after the lock is released
            if failed is not None:
                with contextlib.suppress(OSError):
                    if {p.name for p in out.iterdir()} <= {".lock"}:
                        (out / ".lock").unlink(missing_ok=True)
                        out.rmdir()
            return False

        def take() -> None:
            if not out.exists() and not out.is_symlink():
                self.stack.push(forget)
            output_dir(out)
            self.stack.enter_context(output_lock(out, self.command))
            remove_temporaries(out)
            if check is not None:
                check(out)

        rank_zero_first(self.world, take)
        return out

    def everywhere(self, fn, what: str | None = None):
        """``fn()`` on every rank; an error a user can fix on any rank stops all of them with
        one message naming each rank that failed."""
        return everywhere(self.world, fn, what or self.command)

    def agree(self, value, what: str) -> None:
        """Refuses to go on unless every rank read the same ``value`` (a digest of a model's
        weights, of a store, of annotations)."""
        agree(self.world, value, f"{self.command}: {what}", FILES)


@contextlib.contextmanager
def run_stage(command: str, device: str, settings) -> Iterator[Stage]:
    """The frame of one stage (see the module's notes); ``settings`` are the stage's config,
    compared across ranks by :func:`settings_digest`. A frame inside another (the ablation's
    stages, the pipeline's) leaves the group to the outer one, which ends it."""
    nested = in_group()
    world, device_name = init_world(device)
    try:
        with contextlib.ExitStack() as stack:
            stage = Stage(command, world, device_name, stack)
            agree(world, settings_digest(settings), command)
            yield stage
    except RuntimeError as err:
        lost = _lost_peers(command, err)
        if lost is None:
            raise
        raise lost from err
    finally:
        if not nested:
            shutdown()


def _lost_peers(command: str, err: RuntimeError) -> RcnnError | None:
    """One message for a collective that timed out or lost a peer (a process that died or
    hangs), instead of the communication library's traceback."""
    if "torch" not in sys.modules:  # no group was ever started
        return None
    import torch.distributed as dist

    # gloo reports a timeout as a plain RuntimeError: known by where it was raised.
    within = any("torch/distributed" in f.filename for f in traceback.extract_tb(err.__traceback__))
    if not (isinstance(err, dist.DistError) or within):
        return None
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return RcnnError(
        f"{command}: another process stopped answering (it failed, was killed, or took longer "
        f"than {TIMEOUT_ENV} seconds): {first[:300]}"
    )
