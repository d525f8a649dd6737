"""Two-process DDP training on the CPU (gloo), through torchrun, as a user would launch it."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rcnn.data.regions import RegionSet
from rcnn.evaluation.evaluate import run_evaluate
from rcnn.runtime.config import InferenceConfig

CPU = InferenceConfig(device="cpu", threads=1)

PROBE = Path(__file__).with_name("ddp_probe.py")


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *args]  # fmt: skip
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_ranks_train_disjoint_shards_and_stay_identical(prepared, tmp_path):
    torchrun(str(PROBE), str(prepared), str(tmp_path), cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    labels = RegionSet.load(prepared / "train").labels
    assert ranks[0]["world"] == 2 and ranks[0]["batches"] == ranks[1]["batches"] > 0
    negatives = [{i for i in r["seen"] if labels[i] == 0} for r in ranks]
    assert not negatives[0] & negatives[1], "ranks must train on disjoint regions"
    # This tiny set has fewer positives than the epoch draws, so they are drawn again once
    # used up (as in one process): together the ranks use every positive.
    positives = {i for r in ranks for i in r["seen"] if labels[i] > 0}
    assert positives == set((labels > 0).nonzero()[0].tolist())
    for r in ranks:  # every rank's batches are exactly 4 + 12
        assert sum(labels[i] > 0 for i in r["seen"]) == 4 * r["batches"]
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), f"{key} differs across ranks"
    assert ranks[0]["row"]["val_loss"] == ranks[1]["row"]["val_loss"]
    assert ranks[0]["row"]["val_metrics"]["count"] == len(RegionSet.load(prepared / "val"))


def test_torchrun_cli_metrics_equal_single_process_evaluation(prepared, tmp_path):
    out = tmp_path / "run"
    result = torchrun("-m", "rcnn", "train", "--data", str(prepared), "--out", str(out),
                      "--weights", "none", "--input-size", "64", "--num-pos", "4", "--num-neg",
                      "12", "--workers", "0", "--epochs", "1", "--optimizer", "adam", "--lr",
                      "1e-4", "--device", "cpu", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert result.stdout.count("Epoch 0/0") == 1, "only rank 0 prints"
    (row,) = list(csv.DictReader((out / "metrics.csv").open()))
    metrics = run_evaluate(
        str(out), str(prepared), inference=InferenceConfig(device="cpu", threads=1), progress=False
    )
    assert metrics["accuracy"] == pytest.approx(float(row["val_acc"]), abs=1e-12)
    assert metrics["balanced_accuracy"] == pytest.approx(float(row["val_balanced_acc"]), abs=1e-12)
    assert metrics["loss"] == pytest.approx(float(row["val_loss"]), rel=1e-5)
