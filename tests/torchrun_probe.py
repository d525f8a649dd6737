"""Run under torchrun by the tests (``tests.helpers.torchrun_steps``): several stages in one
launch, one after the other, in one process group that this script starts and ends (a stage
leaves a group it did not start as it found it).

The plan is a JSON list of steps, each one of:

* ``{"name", "argv"}``: ``rcnn ARGV``; ``"rank_argv": {"1": [...]}`` gives a rank other
  arguments, ``"chdir": {"0": DIR, "1": DIR}`` runs a rank in another folder;
* ``"sleep": {"1": SECONDS}`` in a step: that rank sleeps instead (a process that hangs);
* ``{"name", "epoch": [DATA, OUT]}``: one epoch of the library's own distributed training
  (TINY settings); the rank saves the regions it trained on and its weights to OUT.

Each rank writes ``rank{R}.json`` beside the plan: per step, its exit status and what it
printed on stdout and stderr. The group waits ``RCNN_DIST_TIMEOUT`` seconds at a collective.
"""

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from rcnn.cli import main
from rcnn.runtime.distributed import collective_timeout
from tests.helpers import tiny_config


def train_one_epoch(data: str, out: Path) -> None:
    from rcnn.runtime.device import resolve_device
    from rcnn.runtime.distributed import init_world
    from rcnn.training.epoch import history_row, seeded_pass, validate
    from rcnn.training.run import setup_run

    cfg = tiny_config(data, out / "run", epochs=1, lr=1e-4)
    world, device_name = init_world(cfg.device)
    run = setup_run(cfg, False, world, resolve_device(device_name))
    sampler = run.feeders[2]
    sampler.set_epoch(0)
    seen = [i for batch in sampler for i in batch]
    train = seeded_pass(cfg, run, 0)
    row = history_row(0, cfg.lr, train, validate(cfg, run)[0], 0.0)
    state = {"seen": seen, "model": run.model.state_dict(), "row": row, "world": world.size,
             "batches": len(sampler)}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / f"rank{world.rank}.pt")


def run_step(step: dict, rank: str) -> dict:
    if rank in step.get("sleep", {}):  # this rank does nothing for a while
        time.sleep(step["sleep"][rank])
        return {"rc": 0, "out": "", "err": ""}
    if "epoch" in step:
        train_one_epoch(step["epoch"][0], Path(step["epoch"][1]))
        return {"rc": 0, "out": "", "err": ""}
    argv = step.get("rank_argv", {}).get(rank, step["argv"])
    here = os.getcwd()
    os.chdir(step.get("chdir", {}).get(rank, here))
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    finally:
        os.chdir(here)
    sys.stderr.write(err.getvalue())
    return {"rc": rc, "out": out.getvalue(), "err": err.getvalue()}


plan = Path(sys.argv[1]).resolve()
rank = os.environ["RANK"]
dist.init_process_group("gloo", timeout=collective_timeout())
done = {}
for step in json.loads(plan.read_text()):
    done[step["name"]] = run_step(step, rank)
    (plan.parent / f"rank{rank}.json").write_text(json.dumps(done))
    try:
        dist.barrier()  # the next step starts together
    except RuntimeError:  # a step that broke the group (a timeout) ends the plan
        sys.stdout.flush()
        os._exit(0)
dist.destroy_process_group()
