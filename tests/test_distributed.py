"""Two-process training and `rcnn prepare` on the CPU (gloo), through torchrun as a user would
launch them: one launch runs every step below, one after the other."""

import csv

import pytest
import torch

from rcnn.cli import main
from rcnn.data.regions import RegionSet
from rcnn.evaluation.evaluate import run_evaluate
from rcnn.runtime.config import InferenceConfig
from tests.helpers import TINY_FLAGS, torchrun_steps

PREPARE = ["--split", "train", "val", "--classes", "car", "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def launched(prepared, tmp_path_factory):
    """The folder of one torchrun launch and what each rank's steps returned."""
    root = tmp_path_factory.mktemp("torchrun")
    voc = prepared.parent / "voc"
    (root / "elsewhere").mkdir()
    prepare = ["prepare", "--voc-root", str(voc), *PREPARE]
    # The same command, but rank 1 runs where `voc` (a relative path) is not there.
    unseen = ["prepare", "--voc-root", "voc", "--out", str(root / "refused"), "--workers", "1",
              "--cache-dir", str(root / "c3"), "--no-progress"]  # fmt: skip
    steps = [
        {"name": "epoch", "epoch": [str(prepared), str(root / "probe")]},
        {"name": "train", "argv": ["train", "--data", str(prepared), "--out", str(root / "run"),
                                   "--epochs", "1", "--lr", "1e-4", *TINY_FLAGS]},
        {"name": "prepare", "argv": [*prepare, "--out", str(root / "two"), "--cache-dir",
                                     str(root / "c2")]},
        {"name": "unseen", "argv": unseen,
         "chdir": {"0": str(prepared.parent), "1": str(root / "elsewhere")}},
        {"name": "other", "argv": unseen, "rank_argv": {"1": [*unseen[:2], "voc1", *unseen[3:]]},
         "chdir": {"0": str(prepared.parent), "1": str(prepared.parent)}},
    ]  # fmt: skip
    ranks = torchrun_steps(steps, root, env={"RCNN_DIST_TIMEOUT": "60"})
    return root, ranks


def test_ranks_train_disjoint_shards_and_stay_identical(prepared, launched):
    root, _ = launched
    ranks = [torch.load(root / "probe" / f"rank{r}.pt", weights_only=False) for r in range(2)]
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


def test_torchrun_cli_metrics_equal_single_process_evaluation(prepared, launched):
    root, ranks = launched
    assert [r["train"]["rc"] for r in ranks] == [0, 0]
    assert ranks[0]["train"]["out"].count("Epoch 0/0") == 1, "rank 0 prints"
    assert "Epoch" not in ranks[1]["train"]["out"], "only rank 0 prints"
    out = root / "run"
    (row,) = list(csv.DictReader((out / "metrics.csv").open()))
    metrics = run_evaluate(
        str(out), str(prepared), inference=InferenceConfig(device="cpu", threads=1), progress=False
    )
    assert metrics["accuracy"] == pytest.approx(float(row["val_acc"]), abs=1e-12)
    assert metrics["balanced_accuracy"] == pytest.approx(float(row["val_balanced_acc"]), abs=1e-12)
    assert metrics["loss"] == pytest.approx(float(row["val_loss"]), rel=1e-5)


def _files(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (".lock", "summary.json")
    }


def test_torchrun_prepare_writes_the_stores_of_one_process(prepared, launched, tmp_path):
    root, ranks = launched
    assert [r["prepare"]["rc"] for r in ranks] == [0, 0]
    assert "positives" in ranks[0]["prepare"]["out"], "rank 0 reports"
    assert "positives" not in ranks[1]["prepare"]["out"], "only rank 0 reports"
    one = tmp_path / "one"
    voc = prepared.parent / "voc"
    argv = ["prepare", "--voc-root", str(voc), *PREPARE, "--out", str(one)]
    assert main([*argv, "--cache-dir", str(tmp_path / "c1")]) == 0
    files = _files(root / "two")
    assert files == _files(one) and "train/meta.json" in files
    # Each process searched its own share: the two caches together hold every image once.
    cached = sorted(p.name for p in (root / "c2").rglob("*") if p.is_file())
    assert len(cached) == len(sorted(p.name for p in (tmp_path / "c1").rglob("*") if p.is_file()))


@pytest.mark.parametrize(
    ("step", "said"),
    [
        ("unseen", "--voc-root voc failed on 1 of 2 processes: rank 1: "),
        ("other", "rank 1 started with other arguments than rank 0"),
    ],
)
def test_torchrun_prepare_names_the_rank_that_cannot_see_the_dataset(launched, step, said):
    root, ranks = launched
    for rank in ranks:  # every rank stops with the one message
        assert rank[step]["rc"] == 2 and said in rank[step]["err"], rank[step]
    assert not (root / "refused" / "train").exists()
