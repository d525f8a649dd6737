"""kill -9 in the middle of training, then --resume: nothing lost, same weights."""

import contextlib
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


def flip_a_bit_of_a_tensor(path, tensor) -> None:
    """Flips one bit inside ``tensor``'s bytes in the file ``path`` (a new file: ``path`` may
    be a hard link of a shared one)."""
    data = bytearray(path.read_bytes())
    at = bytes(data).find(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    assert at > 0
    data[at + 2] ^= 0x10
    path.unlink()
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_checkpoint_is_named(one_epoch_model, tmp_path, capsys):
    import io
    import json
    import shutil

    import pytest

    from rcnn.files import file_digest
    from rcnn.modeling.checkpoint import CheckpointError, load_checkpoint, load_model
    from tests.helpers import copy_run

    run = copy_run(one_epoch_model, tmp_path / "run")
    record = json.loads((run / "checkpoints.json").read_text())["files"]
    assert sorted(record) == ["best.pt", "initial.pt", "last.pt", "model.pth"]
    for name, entry in record.items():  # as written: best.pt is last.pt's bytes
        assert entry == {"sha256": file_digest(run / name)}, name
    weights = torch.load(run / "best.pt", weights_only=True)["model"]
    name = max(weights, key=lambda k: weights[k].numel())
    flip_a_bit_of_a_tensor(run / "best.pt", weights[name])
    flipped = torch.load(io.BytesIO((run / "best.pt").read_bytes()), weights_only=True)
    assert not torch.equal(flipped["model"][name], weights[name]), "torch alone loads it"
    for load in (lambda: load_checkpoint(run / "best.pt"), lambda: load_model(run)):
        with pytest.raises(CheckpointError, match=r"best.pt is damaged: its bytes are not"):
            load()
    assert main(["evaluate", str(run), "--data", str(one_epoch_model.parent / "regions"),
                 "--device", "cpu", "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"{run / 'best.pt'} is damaged" in err and len(err.strip().splitlines()) == 1
    # last.pt, the same bytes before, is whole; the original run untouched.
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert load_model(one_epoch_model).digest
    # model.pth likewise; the same damaged file without a record (a user's own) loads.
    flip_a_bit_of_a_tensor(run / "model.pth", weights[name])
    with pytest.raises(CheckpointError, match="model.pth is damaged"):
        load_model(run / "model.pth", ["car"])
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(run / "model.pth", mine / "model.pth")
    # Without its config.json the backbone is the default: the message says so (no flag).
    with pytest.raises(CheckpointError, match=r"do not fit the alexnet network \(no config.json "
                       r"beside it: the default\): Missing key"):  # fmt: skip
        load_model(mine / "model.pth", ["car"])
    shutil.copy(run / "config.json", mine / "config.json")
    assert load_model(mine / "model.pth", ["car"]).classes == ["car"]


def test_a_replacement_killed_half_way_leaves_a_checkpoint_that_loads(one_epoch_model, tmp_path):
    import hashlib
    import json

    from rcnn.modeling import checkpoint
    from tests.helpers import copy_run

    run = copy_run(one_epoch_model, tmp_path / "run")
    old = checkpoint.load_checkpoint(run / "last.pt")
    new = {**old, "epoch": 7}

    def killed(after_writing: bool):
        def write():
            if after_writing:
                checkpoint.save_checkpoint(tmp_path / "scratch" / "x.pt", new)
                (run / "last.pt").unlink()
                (tmp_path / "scratch" / "x.pt").rename(run / "last.pt")
            raise KeyboardInterrupt  # kill -9 at this point, as far as the files go

        return write

    for after_writing, epoch in ((False, 1), (True, 7)):
        checkpoint.save_checkpoint(tmp_path / "scratch" / "y.pt", new)
        data = (tmp_path / "scratch" / "y.pt").read_bytes()
        with contextlib.suppress(KeyboardInterrupt):
            checkpoint._replace_recorded(
                run / "last.pt", hashlib.sha256(data).hexdigest(), killed(after_writing)
            )
        entry = json.loads((run / "checkpoints.json").read_text())["files"]["last.pt"]
        assert "replacing" in entry
        assert checkpoint.load_checkpoint(run / "last.pt")["epoch"] == epoch
    # The next replacement finishes: the record holds the new digest alone.
    checkpoint.save_checkpoint(run / "last.pt", old)
    entry = json.loads((run / "checkpoints.json").read_text())["files"]["last.pt"]
    assert entry == {"sha256": hashlib.sha256((run / "last.pt").read_bytes()).hexdigest()}
