"""Run under torchrun by tests/test_distributed.py: one epoch of the library's own distributed
training, then each rank saves the regions it trained on and its final weights."""

import sys
from pathlib import Path

import torch

from rcnn.runtime.device import resolve_device
from rcnn.runtime.distributed import init_world
from rcnn.training.config import TrainConfig
from rcnn.training.train import run_epoch, setup_run

data, out = sys.argv[1], Path(sys.argv[2])
cfg = TrainConfig(data=data, out=str(out / "run"), weights="none", input_size=64, num_pos=4,
                  num_neg=12, workers=0, device="cpu", optimizer="adam", lr=1e-4, epochs=1,
                  val_batch=64, progress=False)  # fmt: skip
world, device_name = init_world(cfg.device)
run = setup_run(cfg, False, world, resolve_device(device_name))
sampler = run.feeders[2]
sampler.set_epoch(0)
seen = [i for batch in sampler for i in batch]
row = run_epoch(cfg, 0, run.net, run.feeders, run.optimizer, run.class_names, world)
torch.save(
    {
        "seen": seen,
        "model": run.model.state_dict(),
        "row": row,
        "world": world.size,
        "batches": len(sampler),
    },
    out / f"rank{world.rank}.pt",
)
