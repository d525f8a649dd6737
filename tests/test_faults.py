"""kill -9 in the middle of training, then --resume: nothing lost, same weights."""

import csv
import os
import signal
import subprocess
import sys
import time

import torch

from rcnn.cli import main
from tests.helpers import TINY_FLAGS as TINY


def epochs_done(run) -> int:
    path = run / "metrics.csv"
    return len(list(csv.DictReader(path.open()))) if path.is_file() else 0


def test_train_killed_after_its_first_epoch_resumes_to_the_same_weights(prepared, tmp_path):
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rcnn", "train", "--data", str(prepared), "--out", str(killed),
           "--epochs", "3", *TINY]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while epochs_done(killed) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # the first epoch's files are written: the next trains
    proc.wait()
    assert 1 <= epochs_done(killed) < 3, "the run should die before its last epoch"

    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "straight"),
                 "--epochs", "3", *TINY]) == 0  # fmt: skip
    a = torch.load(killed / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [r["epoch"] for r in csv.DictReader((killed / "metrics.csv").open())] == ["0", "1", "2"]
