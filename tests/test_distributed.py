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


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (".lock", "summary.json")
    }


def test_torchrun_prepare_writes_the_stores_of_one_process(prepared, tmp_path):
    voc = prepared.parent / "voc"
    args = ["--voc-root", str(voc), "--split", "train", "val", "--classes", "car",
            "--workers", "1", "--no-progress"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    from rcnn.cli import main

    assert main(["prepare", *args, "--out", str(one), "--cache-dir", str(tmp_path / "c1")]) == 0
    result = torchrun("-m", "rcnn", "prepare", *args, "--out", str(two), "--cache-dir",
                      str(tmp_path / "c2"), cwd=tmp_path)  # fmt: skip
    assert result.stdout.count("positives") == 1, "only rank 0 reports"
    files = _files(two)
    assert files == _files(one) and "train/meta.json" in files
    # Each process searched its own share: the two caches together hold every image once.
    cached = sorted(p.name for p in (tmp_path / "c2").rglob("*") if p.is_file())
    assert len(cached) == len(sorted(p.name for p in (tmp_path / "c1").rglob("*") if p.is_file()))


def test_torchrun_prepare_names_the_rank_that_cannot_see_the_dataset(prepared, tmp_path):
    # The same command on both ranks, but rank 1 runs where `voc` is not there.
    (tmp_path / "elsewhere").mkdir()
    script = tmp_path / "probe.py"
    script.write_text(
        "import os, sys\n"
        "from rcnn.cli import main\n"
        "os.chdir(sys.argv[1] if os.environ['RANK'] == '0' else sys.argv[2])\n"
        "root = 'voc' if sys.argv[5] == 'same' else f'voc{os.environ[\"RANK\"]}'\n"
        "sys.exit(main(['prepare', '--voc-root', root, '--out', sys.argv[3], '--workers', '1',"
        " '--cache-dir', sys.argv[4], '--no-progress']))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RCNN_DIST_TIMEOUT": "60"}
    for case, said in (
        ("same", "--voc-root voc failed on 1 of 2 processes: rank 1: "),
        ("other", "rank 1 started with other arguments than rank 0"),
    ):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(script), str(prepared.parent), str(tmp_path / "elsewhere"),
               str(tmp_path / "out"), str(tmp_path / "cache"), case]  # fmt: skip
        result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert result.returncode != 0, case
        assert said in result.stderr, result.stderr[-2000:]
        assert not (tmp_path / "out" / "train").exists()
