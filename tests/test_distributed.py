"""Two-process training and `rcnn prepare` on the CPU (gloo), through torchrun as a user would
launch them: one launch runs every step below, one after the other."""

import csv

import pytest
import torch

from rcnn.cli import main
from rcnn.data.regions import RegionSet
from rcnn.evaluation.evaluate import run_evaluate
from rcnn.modeling.checkpoint import save_checkpoint
from rcnn.runtime.config import InferenceConfig
from tests.helpers import TINY_FLAGS, copy_run, torchrun_steps

PREPARE = ["--split", "train", "val", "--classes", "car", "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def launched(prepared, one_epoch_model, trained, tmp_path_factory):
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
    steps += disagreeing_steps(root, prepared, one_epoch_model, trained)
    ranks = torchrun_steps(steps, root, env={"RCNN_DIST_TIMEOUT": "60"})
    return root, ranks


STAGES = ("train", "features", "train-svm", "train-bbox", "test", "ablate")


def disagreeing_steps(root, prepared, run, trained) -> list[dict]:
    """Steps whose ranks were given other arguments, other files, or only one of them the
    data; and one that writes its output on rank 0's disk alone."""
    for folder in ("a", "b"):
        copy_run(run, root / folder / "run")  # `run` (relative): another model on rank 1
    state = torch.load(run / "best.pt", weights_only=True)
    state["model"]["classifier.6.bias"] += 1e-3
    (root / "b" / "run" / "best.pt").unlink()
    save_checkpoint(root / "b" / "run" / "best.pt", state)  # as a run writes it: recorded
    inference = ["--device", "cpu", "--no-progress", "--workers", "1"]
    detect = [str(trained / "run"), "--voc-root", str(trained / "voc"), "--cache-dir",
              str(trained / "cache"), *inference]  # fmt: skip
    argv = {
        "train": ["train", "--data", str(prepared), "--epochs", "1", *TINY_FLAGS],
        "features": ["features", str(run), "--data", str(prepared), *inference[:-2]],
        "train-svm": ["train-svm", str(run), "--data", str(prepared), *inference[:-2]],
        "train-bbox": ["train-bbox", str(run), "--data", str(prepared), *inference[:-2]],
        "test": ["test", *detect],
        "ablate": ["ablate", *detect, "--data", str(root / "no-data")],
    }  # fmt: skip
    other = {"train": ["--lr", "0.5"]}
    steps = [
        {"name": f"args-{stage}", "argv": [*a, "--out", str(root / "args" / stage)],
         "rank_argv": {"1": [*a, "--out", str(root / "args" / stage),
                             *other.get(stage, ["--batch", "32"])]}}
        for stage, a in argv.items()
    ]  # fmt: skip
    both = {"0": str(root / "a"), "1": str(root / "b")}
    steps.append({"name": "other-model", "chdir": both, "argv": [
        "features", "run", "--data", str(prepared), "--out", str(root / "other-model"),
        *inference[:-2]]})  # fmt: skip
    steps.append({"name": "local-out", "chdir": both, "argv": ["test", *detect, "--out", "out"]})
    coco = ["--coco", "coco/instances_{split}.json", "--images", "JPEGImages"]
    seen = {"0": str(trained / "voc"), "1": str(root / "elsewhere")}
    steps += [
        {"name": "unseen-coco-prepare", "chdir": seen, "argv": [
            "prepare", *coco, "--out", str(root / "unseen"), "--workers", "1", "--no-progress"]},
        {"name": "unseen-coco-test", "chdir": seen, "argv": [
            "test", str(trained / "run"), *coco, "--out", str(root / "unseen"), *inference]},
        {"name": "unseen-voc-test", "chdir": {"0": str(trained), "1": str(root / "elsewhere")},
         "argv": ["test", str(trained / "run"), "--voc-root", "voc", "--out",
                  str(root / "unseen"), *inference]},
    ]  # fmt: skip
    return steps


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


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_refuses_ranks_started_with_other_arguments(launched, stage):
    root, ranks = launched
    for rank in ranks:  # both stop, before any work, with the one message naming rank 1
        found = rank[f"args-{stage}"]
        assert found["rc"] == 2, found
        assert f"rcnn {stage}: rank 1 started with other arguments than rank 0" in found["err"]
    written = [p.name for p in (root / "args" / stage).glob("*") if p.name != ".lock"]
    assert written == [], written


def test_ranks_that_read_another_model_are_refused(launched):
    root, ranks = launched
    for rank in ranks:
        found = rank["other-model"]
        assert found["rc"] == 2, found
        assert "the weights of run: rank 1 reads other files than rank 0" in found["err"]
    assert not (root / "other-model" / "meta.json").exists()


def test_rcnn_test_under_torchrun_writes_on_rank_0_alone(launched, trained):
    # `--out out` is another folder for each process (as on two machines' own disks): rank 0
    # receives every image's detections and writes them all; rank 1 writes nothing.
    root, ranks = launched
    assert [r["local-out"]["rc"] for r in ranks] == [0, 0], ranks[0]["local-out"]["err"]
    ids = (trained / "voc" / "ImageSets" / "Main" / "test.txt").read_text().split()
    written = sorted(p.stem for p in (root / "a" / "out" / "detections").glob("*.npz"))
    assert written == sorted(ids)
    assert (root / "a" / "out" / "metrics.json").is_file()
    assert not (root / "b" / "out").exists()
    assert "mean" in ranks[0]["local-out"]["out"] and ranks[1]["local-out"]["out"] == ""


@pytest.mark.parametrize("step", ["unseen-coco-prepare", "unseen-coco-test", "unseen-voc-test"])
def test_a_rank_that_cannot_see_the_dataset_is_named(launched, step):
    root, ranks = launched
    for rank in ranks:
        found = rank[step]
        assert found["rc"] == 2 and "failed on 1 of 2 processes: rank 1: " in found["err"], found
        assert len(found["err"].strip().splitlines()) == 1, found["err"]
    assert not (root / "unseen" / "metrics.json").exists()


def test_a_process_that_hangs_ends_the_others_with_a_message(prepared, one_epoch_model, tmp_path):
    argv = ["features", str(one_epoch_model), "--data", str(prepared), "--out",
            str(tmp_path / "f"), "--device", "cpu", "--no-progress"]  # fmt: skip
    steps = [{"name": "hang", "argv": argv, "sleep": {"1": 5}}]
    ranks = torchrun_steps(steps, tmp_path / "launch", env={"RCNN_DIST_TIMEOUT": "2"})
    found = ranks[0]["hang"]
    assert found["rc"] == 2 and "another process stopped answering" in found["err"], found
    assert "RCNN_DIST_TIMEOUT" in found["err"] and "Traceback" not in found["err"]


@pytest.mark.parametrize("value", ["nan", "inf", "1e20", "-5", "0", "soon"])
def test_a_timeout_that_is_not_a_number_of_seconds_is_named(value, monkeypatch):
    from rcnn.errors import ConfigError
    from rcnn.runtime.distributed import collective_timeout

    monkeypatch.setenv("RCNN_DIST_TIMEOUT", value)
    with pytest.raises(ConfigError, match=f"RCNN_DIST_TIMEOUT='{value}': must be a number"):
        collective_timeout()
    monkeypatch.setenv("RCNN_DIST_TIMEOUT", "90")
    assert collective_timeout().total_seconds() == 90
