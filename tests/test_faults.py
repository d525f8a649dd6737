"""kill -9 in the middle of training, then --resume: nothing lost, same weights."""

import csv
import os
import signal
import subprocess
import sys
import time

import torch

from rcnn.cli import main

TINY = ["--weights", "none", "--input-size", "64", "--num-pos", "4", "--num-neg", "12",
        "--workers", "0", "--optimizer", "adam", "--lr", "1e-4", "--device", "cpu",
        "--no-progress"]  # fmt: skip


def epochs_done(run) -> int:
    path = run / "metrics.csv"
    return len(list(csv.DictReader(path.open()))) if path.is_file() else 0


def test_train_killed_in_second_epoch_resumes_to_the_same_weights(prepared, tmp_path):
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rcnn", "train", "--data", str(prepared), "--out", str(killed),
           "--epochs", "2", *TINY]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while epochs_done(killed) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # the second epoch has begun: its first batches are training
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert epochs_done(killed) == 1, "the run should die during its second epoch"

    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "straight"),
                 "--epochs", "2", *TINY]) == 0  # fmt: skip
    a = torch.load(killed / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [r["epoch"] for r in csv.DictReader((killed / "metrics.csv").open())] == ["0", "1"]
