import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from rcnn.cli import main
from rcnn.data.regions import RegionSet
from rcnn.errors import ConfigError
from rcnn.evaluation.evaluate import run_compare, run_evaluate
from rcnn.modeling.checkpoint import CheckpointError, load_checkpoint
from rcnn.modeling.model import build_model
from rcnn.progress import minutes_seconds
from rcnn.runtime.config import InferenceConfig
from rcnn.runtime.device import default_amp
from rcnn.runtime.distributed import SINGLE, World
from rcnn.training.config import TrainConfig, train_config
from rcnn.training.epoch import CSV_COLUMNS, TrainingDiverged, train_one_epoch
from rcnn.training.overlap import Saver
from rcnn.training.run import (
    claim_run_folder,
    compile_mode,
    config_from_checkpoint,
    for_device,
    resume_config,
    setup_run,
    val_indices,
)
from rcnn.training.train import run_train
from tests.helpers import tiny_config

CPU = InferenceConfig(device="cpu", threads=1)


def tiny(prepared, out, **kw):
    return tiny_config(prepared, out, **{"lr": 1e-4, **kw})


@pytest.fixture(scope="module")
def one_epoch_run(one_epoch_model):
    """The session's one-epoch run and its best epoch's history row."""
    ckpt = load_checkpoint(one_epoch_model / "last.pt")
    best = next(r for r in ckpt["history"] if r["epoch"] == ckpt["best"]["epoch"])
    return one_epoch_model, best


def test_one_epoch_writes_every_file(one_epoch_run, capsys):
    out, best = one_epoch_run
    for name in ("config.json", "metrics.csv", "curves.png", "last.pt", "best.pt", "model.pth"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["input_size"] == 64 and config["backbone"] == "alexnet_tiny"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1 and tuple(rows[0]) == CSV_COLUMNS
    assert 0 <= float(rows[0]["val_balanced_acc"]) <= 1 and float(rows[0]["train_loss"]) > 0
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["classes"] == ["background", "car"]
    assert best["epoch"] == 0 and 0 <= best["val_acc"] <= 1


def test_evaluate_matches_training_validation(one_epoch_run, prepared):
    out, best = one_epoch_run
    metrics = run_evaluate(
        str(out),
        str(prepared),
        "val",
        inference=InferenceConfig(device="cpu", threads=1),
        progress=False,
    )
    assert metrics["count"] == len(RegionSet.load(prepared / "val"))
    assert metrics["accuracy"] == pytest.approx(best["val_acc"], abs=1e-9)
    assert metrics["balanced_accuracy"] == pytest.approx(best["val_balanced_acc"], abs=1e-9)
    assert metrics["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    for name in ("metrics.json", "pr.png", "examples.png"):
        assert (out / "eval-val" / name).is_file()
    assert "confusion" in json.loads((out / "eval-val" / "metrics.json").read_text())


def test_resume_gives_identical_weights(prepared, tmp_path):
    run_train(tiny(prepared, tmp_path / "straight", epochs=2))
    run_train(tiny(prepared, tmp_path / "resumed", epochs=1, tensorboard=True))
    run_train(resume_config(tmp_path / "resumed", epochs=2), resume=True)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [r["val_loss"] for r in a["history"]] == [r["val_loss"] for r in b["history"]]
    rows = list(csv.DictReader((tmp_path / "resumed" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    check_tensorboard(tmp_path / "resumed", b["history"], RegionSet.load(prepared / "val").labels)


def check_tensorboard(run, history: list[dict], labels: np.ndarray) -> None:
    """The run's TensorBoard events (--tensorboard, then a resume): each epoch once, the
    numbers of its history, and a PR curve of the validation labels."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    for tag, key in (("loss/train", "train_loss"), ("accuracy/val", "val_acc"), ("lr", "lr")):
        found = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in found] == [0, 1], tag  # one point an epoch, none twice
        assert [v for _, v in found] == pytest.approx([r[key] for r in history], rel=1e-6), tag
    # The curve's lowest threshold counts every validation region: as many true positives as
    # object regions, and the rest false positives.
    (curve,) = [e for e in events.Tensors("pr/object") if e.step == 1]
    table = tf_array(curve.tensor_proto)  # rows: TP, FP, TN, FN, precision, recall
    assert table[0, 0] == np.count_nonzero(labels) and table[1, 0] == np.count_nonzero(labels == 0)
    # --overwrite deletes the curves with the run.
    claim_run_folder(run, overwrite=True)
    assert not (run / "tensorboard").exists()


def test_resume_steps_the_way_this_run_chooses(one_epoch_run, tmp_path):
    # A checkpoint from a run whose optimizer was not fused: this run still steps fused.
    source, _ = one_epoch_run
    ckpt = load_checkpoint(source / "last.pt")
    for group in ckpt["optimizer"]["param_groups"]:
        group["fused"] = None
    torch.save(ckpt, tmp_path / "last.pt")
    cfg = replace(config_from_checkpoint(ckpt), out=str(tmp_path), epochs=2)
    run = setup_run(cfg, resume=True, world=SINGLE, device=torch.device("cpu"))
    assert run.first_epoch == 1
    assert all(group["fused"] for group in run.optimizer.param_groups)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(prepared, tmp_path):
    run = tmp_path / "run"
    run_train(tiny(prepared, run, epochs=1))
    before = (run / "last.pt").read_bytes()
    bad = build_model("alexnet_tiny", 2, "none")
    with torch.no_grad():
        bad.classifier[6].weight.fill_(float("nan"))
    torch.save(bad.state_dict(), tmp_path / "nan.pth")
    with pytest.raises(TrainingDiverged, match="NaN or infinite"):
        run_train(tiny(prepared, tmp_path / "nan_run", epochs=1, weights=str(tmp_path / "nan.pth")))
    assert not (tmp_path / "nan_run" / "last.pt").exists()
    assert not (tmp_path / "nan_run" / "config.json").exists(), "nothing was run to record"
    assert (run / "last.pt").read_bytes() == before


def test_bad_inputs(prepared, one_epoch_run, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="--data .*missing: folder not found"):
        run_train(tiny(tmp_path / "missing", tmp_path / "out"))
    out, _ = one_epoch_run
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((out / "best.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable checkpoint"):
        load_checkpoint(truncated)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not an rcnn checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    # A 2-class checkpoint against 3-class data.
    three = RegionSet.load(prepared / "val")
    three.classes = ["car", "bus"]
    three.save(tmp_path / "three")
    with pytest.raises(CheckpointError, match=r"trained for classes \['car'\] but"):
        run_evaluate(
            str(out),
            str(tmp_path / "three"),
            inference=InferenceConfig(device="cpu", threads=1),
            progress=False,
        )
    assert main(["train", "--data", str(prepared)]) == 2
    assert "--data and --out are required" in capsys.readouterr().err
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "x"), "--lr", "-1"]) == 2
    assert "--lr must be > 0" in capsys.readouterr().err


def test_presets_and_validation():
    assert train_config("seed").lr == 1e-3 and train_config("seed").epochs == 25
    assert train_config("adam").optimizer == "adam"
    assert train_config("weight-decay").weight_decay == 1e-4
    paper = train_config("paper", lr=0.01)
    assert (paper.context_pad, paper.weight_decay, paper.head_lr_mult, paper.lr) == (
        16,
        5e-4,
        10.0,
        0.01,
    )
    with pytest.raises(ValueError, match="--preset"):
        train_config("fast")
    with pytest.raises(ValueError, match="--context-pad"):
        TrainConfig(input_size=64, context_pad=32)


def test_val_subset_is_fixed():
    a, b = val_indices(1000, 100, seed=0), val_indices(1000, 100, seed=0)
    assert (a == b).all() and len(set(a.tolist())) == 100 and (a[:-1] < a[1:]).all()
    assert len(val_indices(50, 100, seed=0)) == 50


def test_elapsed_time_reads_as_minutes_and_seconds():
    assert minutes_seconds(119.6) == "2m 0s"
    assert minutes_seconds(59.4) == "0m 59s"
    assert minutes_seconds(3725) == "62m 5s"


def test_compare_writes_figure_and_table(one_epoch_run, tmp_path):
    out, _ = one_epoch_run
    table = run_compare([str(out), str(out)], str(tmp_path / "cmp.png"))
    assert (tmp_path / "cmp.png").is_file()
    assert "best epoch" in table and len(table.splitlines()) == 3


@pytest.mark.parametrize("command", ["synth", "prepare", "train", "evaluate", "compare", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: rcnn " + command in capsys.readouterr().out


def test_amp_on_the_device_pipeline(prepared, tmp_path):
    # bf16 autocast with the batched roi_align path (which CUDA uses by default) on the CPU,
    # over two batches: bfloat16 is emulated, slowly (seconds a step), on CPUs without it.
    from rcnn.data.feeders import DeviceFeeder
    from rcnn.evaluation.predict import evaluate

    cpu = torch.device("cpu")
    cfg = for_device(tiny(prepared, tmp_path / "amp", amp=True, pipeline="device"), cpu)
    run = setup_run(cfg, resume=False, world=SINGLE, device=cpu)
    train, val, sampler = run.feeders
    assert isinstance(train, DeviceFeeder) and cfg.amp is True
    sampler.set_epoch(0)
    train.batches = list(sampler)[:2]
    val.batches = val.batches[:1]
    flips = torch.Generator().manual_seed(0)
    found = train_one_epoch(run.net, train, run.optimizer, flips, amp=True, progress=False)
    assert found["loss"] > 0 and np.isfinite(found["loss"]) and 0 <= found["acc"] <= 1
    metrics = evaluate(run.net, val, run.class_names, amp=True, progress=False)
    assert np.isfinite(metrics["loss"]) and metrics["count"] == len(val.batches[0])


@pytest.mark.parametrize("native", ["0", "1", None])
def test_device_defaults_are_decided_once_and_recorded(monkeypatch, native):
    cpu = torch.device("cpu")
    if native is None:  # the machine's own answer
        monkeypatch.delenv("RCNN_NATIVE_BF16")
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    else:
        monkeypatch.setenv("RCNN_NATIVE_BF16", native)
        native = native == "1"
    cfg = for_device(TrainConfig(), cpu)
    assert (cfg.amp, cfg.val_batch) == (native, 256)  # bfloat16 only where it is native
    kept = for_device(TrainConfig(amp=True, val_batch=64), cpu)
    assert (kept.amp, kept.val_batch) == (True, 64)
    assert compile_mode(cpu, SINGLE) is None
    with pytest.raises(ValueError, match="--val-batch"):
        TrainConfig(val_batch=-1)


def test_amp_flag_parses_both_ways(monkeypatch):
    seen = {}
    monkeypatch.setattr("rcnn.training.train.run_train", lambda cfg, **kw: seen.update(cfg=cfg))
    for flags, amp in (([], None), (["--amp"], True), (["--no-amp"], False)):
        assert main(["train", "--data", "d", "--out", "o", *flags]) == 0
        assert seen["cfg"].amp is amp


def test_automatic_settings_are_decided_again_on_resume(one_epoch_run):
    out, _ = one_epoch_run
    saved = load_checkpoint(out / "last.pt")["config"]
    assert saved["amp"] is None and saved["val_batch"] == 64  # as given: amp automatic
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["amp"] == default_amp(torch.device("cpu"))  # config.json: what was run


def _without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def test_overlapped_validation_computes_the_plain_numbers(prepared, tmp_path):
    # Validation of epoch N interleaved with epoch N+1's steps (on one thread on the CPU)
    # gives the same rows, weights, optimizer and scheduler state, also across a resume, with
    # the learning rate stepping every epoch so that the scheduler's snapshot matters.
    kw = dict(lr_step=1, val_batch=16, val_max=96, num_pos=8, num_neg=24)
    run_train(tiny(prepared, tmp_path / "plain", epochs=3, overlap_val=False, **kw))
    run_train(tiny(prepared, tmp_path / "overlapped", epochs=2, overlap_val=True, **kw))
    run_train(resume_config(tmp_path / "overlapped", epochs=3), resume=True)
    plain = load_checkpoint(tmp_path / "plain" / "last.pt")
    overlapped = load_checkpoint(tmp_path / "overlapped" / "last.pt")
    assert overlapped["config"]["overlap_val"] is True and plain["epoch"] == 3
    assert _without_seconds(plain["history"]) == _without_seconds(overlapped["history"])
    for key in ("model", "optimizer", "scheduler", "best", "epoch", "classes"):
        _assert_same_tensors(plain[key], overlapped[key], key)
    recorded = json.loads((tmp_path / "overlapped" / "config.json").read_text())
    assert recorded["overlap_val"] is True and recorded["cuda_graphs"] is False
    best = torch.load(tmp_path / "overlapped" / "model.pth", weights_only=True)
    _assert_same_tensors(torch.load(tmp_path / "plain" / "model.pth", weights_only=True), best)
    rows = list(csv.DictReader((tmp_path / "overlapped" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert all(float(r["seconds"]) > 0 for r in rows)


def test_schedules_the_device_or_launch_cannot_run_are_refused():
    cpu = torch.device("cpu")
    auto = for_device(TrainConfig(), cpu)
    assert (auto.cuda_graphs, auto.overlap_val) == (False, False)  # CUDA-only defaults
    assert for_device(TrainConfig(overlap_val=True), cpu).overlap_val is True
    with pytest.raises(ValueError, match="--cuda-graphs: it needs a CUDA device"):
        for_device(TrainConfig(cuda_graphs=True), cpu)
    torchrun = World(rank=0, size=2)
    with pytest.raises(ValueError, match="--overlap-val: not under torchrun"):
        for_device(TrainConfig(overlap_val=True), cpu, torchrun)
    assert for_device(TrainConfig(), cpu, torchrun).overlap_val is False


def test_a_failed_checkpoint_write_is_reported():
    saver = Saver()

    def fail():
        raise OSError("No space left on device")

    saver.submit(fail)
    with pytest.raises(OSError, match="No space left"):
        saver.join()
    saver.join()  # reported once


def tf_array(proto) -> np.ndarray:
    from tensorboard.util.tensor_util import make_ndarray

    return make_ndarray(proto)


def test_tensorboard_without_the_package_says_how_to_install(prepared, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch\n0\n")  # a run that --overwrite would replace
    with pytest.raises(ConfigError, match=r"pip install 'rcnn\[tensorboard\]'"):
        run_train(tiny(prepared, run, epochs=1, tensorboard=True), overwrite=True)
    assert (run / "metrics.csv").read_text() == "epoch\n0\n", "said before anything is touched"
    assert not (run / "last.pt").exists()
