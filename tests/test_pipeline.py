"""`rcnn pipeline`: every stage on a dataset, killed and resumed, re-run as a no-op, a changed
flag redoing only the stages it affects, and its report agreeing with each row's metrics."""

import csv
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rcnn.cli import main
from rcnn.data.synth import make_synthetic_voc
from rcnn.detection.ablate import ROWS
from tests.helpers import one_process, torchrun, torchrun_steps

CLASSES = ["car", "bus", "person"]
FLAGS = [
    "--classes", *CLASSES, "--backbone", "alexnet_tiny", "--weights", "none", "--input-size",
    "48", "--num-pos", "4", "--num-neg", "12", "--optimizer", "adam", "--lr", "1e-3",
    "--epochs", "3", "--device", "cpu", "--no-amp", "--threads", "1", "--workers", "1",
    "--no-progress",
]  # fmt: skip


def epochs_done(run) -> int:
    path = run / "metrics.csv"
    return len(list(csv.DictReader(path.open()))) if path.is_file() else 0


def records(out) -> dict:
    return {p.stem: p.read_bytes() for p in sorted((out / ".stages").glob("*.json"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-class dataset; the pipeline killed in the middle of training and run again to the
    end; and the same pipeline straight through."""
    root = tmp_path_factory.mktemp("pipeline")
    make_synthetic_voc(root / "voc", 16, 4, (128, 96), 0.25, 0.25, CLASSES)  # each class in
    # each split
    common = ["pipeline", "--voc-root", str(root / "voc"), "--cache-dir", str(root / "cache"),
              *FLAGS]  # fmt: skip
    killed = root / "killed"
    cmd = [sys.executable, "-m", "rcnn", *common, "--out", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while epochs_done(killed / "run") < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= epochs_done(killed / "run") < 3, "the pipeline should die while training"
    stages = json.loads((killed / ".stages" / "train.json").read_text())
    assert stages["state"] == "started"
    return root, common


def test_a_killed_pipeline_resumes_to_the_files_of_a_straight_run(runs, caplog, capsys):
    root, common = runs
    caplog.set_level(logging.INFO)
    assert main([*common, "--out", str(root / "killed")]) == 0
    assert "[3/5] train: fine-tuning (rcnn train) (continuing)" in caplog.text
    assert "[1/5] regions: up to date" in caplog.text
    assert "stages run: train, evaluate, ablation" in capsys.readouterr().out
    assert main([*common, "--out", str(root / "straight")]) == 0
    killed, straight = root / "killed", root / "straight"
    assert [r["epoch"] for r in csv.DictReader((killed / "run" / "metrics.csv").open())] == [
        "0",
        "1",
        "2",
    ]
    for name in ("ablation/ablation.json", "ablation/fine-tuned/fc7-bbox/metrics.json",
                 "evaluate/metrics.json"):  # fmt: skip
        found = (killed / name).read_text().replace(str(killed), str(straight))  # its paths
        assert found == (straight / name).read_text(), name
    for name in ("run/svm/svm.npz", "run/bbox/bbox.npz"):
        a, b = np.load(killed / name), np.load(straight / name)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {key}")
    report = (straight / "report.md").read_text()
    assert "## The paper's Table 2 on this dataset" in report
    assert "| train: fine-tuning (rcnn train) |" in report


def test_the_reports_table_is_each_rows_own_test_metrics(runs):
    root, _ = runs
    out = root / "straight"
    lines = {line.split(" | ")[0].strip("| "): line for line in
             (out / "report.md").read_text().splitlines() if line.startswith("| ")}  # fmt: skip
    for row in ROWS:
        metrics = json.loads(
            (out / "ablation" / row.network / row.name / "metrics.json").read_text()
        )
        cells = [c.strip() for c in lines[row.title].strip("| ").split(" | ")]
        assert cells[1:4] == [f"{metrics['classes'][c]['ap_07']:.3f}" for c in CLASSES], row
        assert cells[4] == f"{metrics['map_07']:.3f}" and cells[5] == f"{metrics['map']:.3f}"
        assert cells[-1] == f"{row.paper / 100:.3f}"


def test_a_rerun_with_nothing_changed_runs_no_stage(runs, capsys):
    root, common = runs
    out = root / "straight"
    before = records(out)
    assert main([*common, "--out", str(out)]) == 0
    assert "stages run: none (all up to date)" in capsys.readouterr().out
    assert records(out) == before


def test_a_changed_flag_redoes_its_stage_and_the_old_one_comes_back(runs, caplog, capsys):
    root, common = runs
    out = root / "straight"
    before = records(out)
    table = (out / "ablation" / "ablation.json").read_text()
    assert main([*common, "--out", str(out), "--nms", "0.5"]) == 0
    assert "stages run: ablation" in capsys.readouterr().out
    after = records(out)
    assert {k for k in after if after[k] != before[k]} == {"ablation"}
    kept = out / ".previous" / "ablation"
    assert (kept / "ablation" / "ablation.json").read_text() == table
    assert (kept / "run" / "svm" / "svm.npz").is_file()
    caplog.set_level(logging.INFO)
    assert main([*common, "--out", str(out)]) == 0  # the old settings: back without work
    assert "stages run: none (all up to date)" in capsys.readouterr().out
    assert "[5/5] ablation: up to date (restored)" in caplog.text
    assert records(out) == before
    assert (out / "ablation" / "ablation.json").read_text() == table
    settings = json.loads((kept / "ablation.json").read_text())["settings"]
    assert settings["test"]["detector"]["nms"] == 0.5  # the newer one is kept in its place


def test_another_spelling_of_the_same_settings_is_no_change(runs, capsys, monkeypatch):
    """Paths written otherwise, and `--device auto` where it means the CPU."""
    import torch

    root, common = runs
    out = root / "straight"
    before = records(out)
    monkeypatch.chdir(root)
    other = {str(root / "voc"): "voc/"}
    if not torch.cuda.is_available():
        other["cpu"] = "auto"
    spelled = [other.get(arg, arg) for arg in common]
    assert main([*spelled, "--out", "./straight/"]) == 0
    assert "stages run: none (all up to date)" in capsys.readouterr().out
    assert records(out) == before


def test_a_pipeline_killed_before_its_first_epoch_trains_again(runs, capsys):
    """What a kill during the first epoch leaves: the train stage started, initial.pt and
    config.json in the run folder, no last.pt. The re-run trains from the start, to the
    same weights."""
    root, common = runs
    out = root / "straight"
    run = out / "run"
    weights = (run / "model.pth").read_bytes()
    record = json.loads((out / ".stages" / "train.json").read_text())
    for name in ("last.pt", "best.pt", "model.pth", "metrics.csv", "curves.png"):
        (run / name).unlink()
    record["state"] = "started"
    (out / ".stages" / "train.json").write_text(json.dumps(record))
    assert main([*common, "--out", str(out)]) == 0
    assert "stages run: train" in capsys.readouterr().out
    assert (run / "model.pth").read_bytes() == weights
    assert epochs_done(run) == 3


def test_an_out_folder_with_other_files_is_refused_untouched(runs, tmp_path, capsys):
    root, common = runs
    out = tmp_path / "mine"
    (out / "regions").mkdir(parents=True)
    (out / "regions" / "notes.txt").write_text("mine")
    assert main([*common, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'regions'} is there, but no record of `rcnn pipeline`" in err
    assert (out / "regions" / "notes.txt").read_text() == "mine"


def test_each_stage_reads_the_proposal_file_that_holds_its_splits(runs, tmp_path, capsys):
    """Fast R-CNN's two files (trainval and test), written from the searched proposals: the
    fine-tuning and SVM regions read the first, detection the second, and the regions are the
    ones the search gave; a file lacking a split's images is refused before any stage."""
    from rcnn.data.readers import open_dataset
    from rcnn.pipeline.config import PipelineConfig
    from rcnn.pipeline.run import steps_of

    root, common = runs
    files = {}
    for split in ("trainval", "test"):
        files[split] = tmp_path / f"{split}.mat"
        assert main(["proposals", "--voc-root", str(root / "voc"), "--split", split,
                     "--mode", "fast", "--cache-dir", str(root / "cache"), "--workers", "1",
                     "--out", str(files[split]), "--no-progress"]) == 0  # fmt: skip
    mats = [str(files["trainval"]), str(files["test"])]
    cfg = PipelineConfig(out=str(tmp_path / "p"), voc_root=str(root / "voc"), classes=CLASSES,
                         proposal_files=mats, progress=False)  # fmt: skip
    steps = {s.name: s for s in steps_of(cfg, open_dataset(cfg.voc_root), "trainval")}
    assert steps["regions"].settings["prepare"]["proposals"]["file"] == mats[0]
    assert steps["regions-svm"].settings["prepare"]["proposals"]["file"] == mats[0]
    assert steps["ablation"].settings["test"]["detector"]["proposals"] == mats[1]
    assert steps["regions"].inputs["proposals"] != steps["ablation"].inputs["proposals"]
    steps["regions"].run()
    for split in ("train", "val"):
        for name in ("boxes.npy", "labels.npy"):
            made, searched = (
                f / "regions" / split / name for f in (tmp_path / "p", root / "killed")
            )
            assert np.array_equal(np.load(made), np.load(searched)), (split, name)
    out = tmp_path / "refused"
    assert main([*common, "--out", str(out), "--proposals", mats[1]]) == 2
    err = capsys.readouterr().err
    n = sum(len(open_dataset(cfg.voc_root).ids(split)) for split in ("train", "val"))
    assert (
        f"no file holds every image of split train + val ({n} images; {mats[1]} lacks {n})" in err
    )
    assert not (out / ".stages").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--classes", "car", "car"], "--classes has duplicates"),
        (["--test-split", "val"], "must differ"),
        (["--svm-split", "../x"], "--svm-split"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--voc-root", "/nonexistent/voc"], "/nonexistent/voc/Annotations not found"),
    ],
)
def test_bad_flags_are_named(runs, tmp_path, capsys, flags, message):
    root, common = runs
    assert main([*common, "--out", str(tmp_path / "o"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing left behind, not even the lock


@pytest.fixture(scope="module")
def dist(runs, tmp_path_factory):
    """The pipeline of one epoch run by a 2-process torchrun: its folder and what it printed."""
    root, common = runs
    cwd = tmp_path_factory.mktemp("dist")
    argv = ["-m", "rcnn", *common, "--out", str(cwd / "out"), "--epochs", "1"]
    return cwd / "out", torchrun(*argv, cwd=cwd), argv


def test_torchrun_runs_every_stage_across_processes(dist):
    out, _, argv = dist
    done = {name: json.loads(text)["state"] for name, text in records(out).items()}
    assert done == dict.fromkeys(
        ["ablation", "evaluate", "regions", "regions-svm", "train"], "done"
    )
    assert re.search(
        r"\| fc7, fine-tuned, \+ box regression \| [0-9.]+", (out / "report.md").read_text()
    )
    again = torchrun(*argv, cwd=out.parent)
    assert "stages run: none (all up to date)" in again.stdout


def test_the_ablation_of_several_classes_is_the_same_bytes_in_one_process_and_two(runs, dist):
    # Three classes, a batch other than the default, both precisions: each image's regions
    # are scored in batches of their own, so sharing the images out changes no byte, as long
    # as each process computes with as many CPU kernel threads (torchrun: OMP_NUM_THREADS=1,
    # here torch.set_num_threads(1)); `--threads` (warping) does not change a result.
    root, out = runs[0], dist[0]
    ablate = ["ablate", str(out / "run"), "--voc-root", str(root / "voc"), "--split", "test",
              "--data", str(out / "regions-svm"), "--train-split", "svm", "--batch", "16",
              "--device", "cpu", "--workers", "1", "--cache-dir", str(root / "cache"),
              "--no-progress"]  # fmt: skip
    steps = []
    for amp in ("--amp", "--no-amp"):
        one_process(*ablate, amp, "--threads", "2", "--out", str(out.parent / f"one{amp}"))
        steps.append({"name": amp, "argv": [*ablate, amp, "--threads", "1", "--out",
                                            str(out.parent / f"two{amp}")]})  # fmt: skip
    ranks = torchrun_steps(steps, out.parent / "launch")
    assert all(rank[s["name"]]["rc"] == 0 for rank in ranks for s in steps), ranks
    names = ["ablation.md", "ablation.json"]
    names += [f"heads/{net}/{layer}/svm.npz" for net in ("initial", "fine-tuned")
              for layer in ("pool5", "fc6")]  # fmt: skip
    names += [f"{row.network}/{row.name}/comp4_det_test_{c}.txt" for row in ROWS for c in CLASSES]
    for amp in ("--amp", "--no-amp"):
        one, two = out.parent / f"one{amp}", out.parent / f"two{amp}"
        for name in names:
            assert (one / name).read_bytes() == (two / name).read_bytes(), (amp, name)
