"""``rcnn train``: fine-tune a classifier on warped regions with balanced 32 + 96 batches.

``train_one_epoch`` and ``evaluate`` are free functions that return numbers; ``run_train``
only wires data, model, optimizer and checkpoints together.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from rcnn.data.batches import chunks, make_feeder
from rcnn.data.regions import RegionSet, load_train_val
from rcnn.data.sampler import BalancedBatchSampler
from rcnn.errors import ConfigError, RcnnError
from rcnn.evaluation.predict import metrics_of, predict
from rcnn.files import (
    atomic_write_bytes,
    atomic_write_json,
)
from rcnn.modeling.checkpoint import (
    check_classes,
    link_atomic,
    load_checkpoint,
    save_checkpoint,
)
from rcnn.modeling.model import ModelSpec, build_model, check_input_size, parameter_groups
from rcnn.progress import minutes_seconds, progress_bar
from rcnn.runtime.allocator import reuse_freed_memory
from rcnn.runtime.config import CPU_BATCH, CUDA_BATCH
from rcnn.runtime.device import amp_dtype, configure_device, default_amp, resolve_device
from rcnn.runtime.distributed import FILES, SINGLE, World, agree, all_sum, barrier
from rcnn.runtime.stage import run_stage
from rcnn.training.board import FOLDER as BOARD
from rcnn.training.board import Board, summary_writer
from rcnn.training.config import TrainConfig
from rcnn.training.overlap import (
    PendingValidation,
    Saver,
    Snapshot,
    new_stream,
    stream_context,
)
from rcnn.training.steps import EagerStep, GraphedStep

logger = logging.getLogger(__name__)


class TrainingDiverged(RcnnError):
    """The loss became NaN or infinite (usually a too high --lr); the last good checkpoint
    is kept."""


def for_device(cfg: TrainConfig, device: torch.device, world: World = SINGLE) -> TrainConfig:
    """``cfg`` with its device-dependent defaults decided: ``amp`` (:func:`default_amp`),
    ``val_batch``, ``cuda_graphs`` and ``overlap_val``; settings the device or the launch
    cannot honour are refused by name."""
    amp = default_amp(device) if cfg.amp is None else cfg.amp
    val_batch = cfg.val_batch or (CUDA_BATCH if device.type == "cuda" else CPU_BATCH)
    cuda = device.type == "cuda"
    # Why a CUDA graph cannot be captured here, if it cannot: the first reason found.
    graph_obstacles = [
        (not cuda, "it needs a CUDA device"),
        (world.enabled, "not under torchrun (DDP synchronizes gradients outside the step)"),
        (cfg.compile, "--compile captures its own graphs"),
        (cfg.optimizer != "sgd", "it needs --optimizer sgd"),
        (cuda and amp and amp_dtype(device) == torch.float16, "float16 needs loss scaling"),
    ]
    obstacle = next((why for found, why in graph_obstacles if found), None)
    if cfg.cuda_graphs and obstacle:
        raise ConfigError(f"--cuda-graphs: {obstacle}")
    cuda_graphs = obstacle is None if cfg.cuda_graphs is None else cfg.cuda_graphs
    if cfg.overlap_val and world.enabled:
        raise ConfigError(
            "--overlap-val: not under torchrun (validation is sharded across the processes)"
        )
    # Off unless asked: on an H200 the training kernels already keep the GPU busy (96%), so
    # validating alongside gave the same epoch time (25.7 s) and delays each log by an epoch.
    overlap = bool(cfg.overlap_val)
    return replace(cfg, amp=amp, val_batch=val_batch, cuda_graphs=cuda_graphs, overlap_val=overlap)


def compile_mode(device: torch.device, world) -> str | None:
    """CUDA graphs (``reduce-overhead``) on one GPU, where launching AlexNet's kernels one by
    one from Python is a large part of a step; torch's default mode elsewhere."""
    return "reduce-overhead" if device.type == "cuda" and not world.enabled else None


def train_one_epoch(
    model,
    feeder,
    optimizer,
    generator,
    amp=False,
    progress=True,
    desc="train",
    step: EagerStep | None = None,
    alongside=None,
) -> dict:
    """One pass over the feeder's (normalized) batches; returns mean loss and accuracy.

    ``step`` runs each batch (an :class:`EagerStep` of ``model`` when not given);
    ``alongside(i, n)``, when given, is called after the i-th of the n steps (validation of
    the previous epoch runs there)."""
    model.train()
    device = next(model.parameters()).device
    step = step or EagerStep(model, optimizer, amp)
    step.reset()
    batches = feeder.iterate(flips=generator)  # the recipe's random horizontal flip
    steps = len(feeder)
    bar = progress_bar(batches, progress, total=steps, desc=desc, leave=False)
    for i, (images, labels) in enumerate(bar):
        step(images, labels)
        if alongside is not None:
            alongside(i + 1, steps)
        if i % 50 == 0 and not torch.isfinite(step.loss_sum):  # a CPU-GPU sync; kept rare
            break
    loss_sum, correct, seen = step.sums()
    # Every rank's sums, so all ranks agree on the numbers and on stopping.
    loss_sum, correct, seen = all_sum(loss_sum, correct, torch.tensor(seen, device=device))
    if not torch.isfinite(loss_sum):
        raise TrainingDiverged("the training loss became NaN or infinite")
    seen = max(int(seen), 1)
    return {"loss": loss_sum.item() / seen, "acc": correct.item() / seen}


def val_indices(num_regions: int, val_max: int, seed: int) -> np.ndarray:
    """All regions, or a fixed random subset of ``val_max`` (drawn once, in order)."""
    if not val_max or val_max >= num_regions:
        return np.arange(num_regions)
    rng = np.random.default_rng([seed, 1234])
    return np.sort(rng.choice(num_regions, size=val_max, replace=False))


def make_feeders(
    cfg: TrainConfig, train_rs: RegionSet, val_rs: RegionSet, device, world: World = SINGLE
):
    """The balanced training feeder, the fixed ordered validation feeder, and the sampler;
    each rank gets its shard of both."""
    sampler = BalancedBatchSampler(
        train_rs.labels,
        cfg.num_pos,
        cfg.num_neg,
        cfg.seed,
        num_replicas=world.size,
        rank=world.rank,
    )
    val_batches = chunks(val_indices(len(val_rs), cfg.val_max, cfg.seed), cfg.val_batch)
    val_batches = val_batches[world.rank :: world.size]
    warp = ModelSpec.of(cfg).warp()
    feeder = dict(warp=warp, device=device, pipeline=cfg.pipeline, workers=cfg.workers)
    train = make_feeder(train_rs, sampler, **feeder)
    val = make_feeder(val_rs, val_batches, **feeder)
    return train, val, sampler


def make_optimizer(cfg: TrainConfig, model):
    groups = parameter_groups(model, cfg.lr, cfg.weight_decay, cfg.head_lr_mult)
    # One fused kernel per step instead of several passes over the 61M AlexNet weights.
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, fused=fused)
    else:
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step, cfg.lr_gamma)
    return optimizer, scheduler


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


CSV_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_balanced_acc",
    "val_recipe_acc",
    "val_object_ap",
    "seconds",
)


def write_history(out: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(out / "metrics.csv", buf.getvalue().encode())
    from rcnn.evaluation.plots import plot_curves

    plot_curves(history, out / "curves.png")


def _better(metric: str, value: float, best: dict | None) -> bool:
    if best is None or best["value"] is None or math.isnan(best["value"]):
        return True
    return value < best["value"] if metric == "val_loss" else value > best["value"]


def print_epoch(epoch: int, epochs: int, row: dict) -> None:
    print(f"Epoch {epoch}/{epochs - 1}")
    print("-" * 10)
    print(f"train Loss: {row['train_loss']:.4f} Acc: {row['train_acc']:.4f}")
    print(f"val Loss: {row['val_loss']:.4f} Acc: {row['val_acc']:.4f}")
    print(
        f"val balanced Acc: {row['val_balanced_acc']:.4f} recipe-mix Acc: "
        f"{row['val_recipe_acc']:.4f} AP: {row['val_object_ap']:.4f}"
    )
    print(flush=True)


def train_part(cfg, epoch, model, loaders, optimizer, world, step=None, alongside=None):
    """Epoch ``epoch``'s training pass, seeded so that a resumed run repeats it exactly."""
    train_feeder, _, sampler = loaders
    torch.manual_seed(epoch_seed(cfg.seed, epoch) + world.rank)  # dropout: same on resume
    sampler.set_epoch(epoch)
    flips = torch.Generator().manual_seed(epoch_seed(cfg.seed + 1, epoch) + world.rank)
    desc = f"epoch {epoch} train"
    return train_one_epoch(
        model, train_feeder, optimizer, flips, cfg.amp, cfg.progress, desc, step, alongside
    )


def history_row(epoch: int, lr: float, train: dict, val: dict, seconds: float) -> dict:
    return {
        "epoch": epoch,
        "lr": lr,
        "train_loss": train["loss"],
        "train_acc": train["acc"],
        "val_loss": val["loss"],
        "val_acc": val["accuracy"],
        "val_balanced_acc": val["balanced_accuracy"],
        "val_recipe_acc": val["recipe_accuracy"],
        "val_object_ap": val["object_ap"],
        "seconds": round(seconds, 2),
        "val_metrics": val,
    }


def run_epoch(
    cfg,
    epoch,
    model,
    loaders,
    optimizer,
    class_names,
    world: World = SINGLE,
    step=None,
    seen: list | None = None,
) -> dict:
    """Trains one epoch, validates on the whole validation set, returns the history row
    (and appends the validation's probabilities and labels to ``seen``, when given)."""
    start = time.perf_counter()
    lr = optimizer.param_groups[0]["lr"]
    train = train_part(cfg, epoch, model, loaders, optimizer, world, step)
    probs, labels, loss_sum = predict(model, loaders[1], cfg.amp, cfg.progress)
    if seen is not None:
        seen.append((probs, labels))
    val = metrics_of(probs, labels, loss_sum, class_names)
    return history_row(epoch, lr, train, val, time.perf_counter() - start)


@dataclass
class Run:
    """Everything a training run holds between epochs."""

    model: torch.nn.Module  # the plain model: what is saved
    net: torch.nn.Module  # what is trained: the model, DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    feeders: tuple
    class_names: list[str]
    world: World
    step: EagerStep | None = None  # runs each training batch (eagerly or as a CUDA graph)
    board: Board | None = None  # TensorBoard event files (rank 0, with --tensorboard)
    history: list = field(default_factory=list)
    best: dict | None = None
    first_epoch: int = 0
    # The settings as given, automatic ones (amp, val_batch) unresolved, so that a resumed
    # run decides them for the device it resumes on; config.json records the resolved ones.
    requested: dict = field(default_factory=dict)


def setup_run(cfg: TrainConfig, resume: bool, world: World, device: torch.device) -> Run:
    """Data, model, optimizer and (when resuming) the state of ``cfg.out/last.pt``."""
    out = Path(cfg.out)
    train_rs, val_rs = load_train_val(cfg.data)
    generations = [regions.info.get("generation") for regions in (train_rs, val_rs)]
    agree(world, generations, f"rcnn train: the region stores of --data {cfg.data}", FILES)
    class_names = ["background", *train_rs.classes]
    ckpt = load_checkpoint(out / "last.pt") if resume else None
    torch.manual_seed(cfg.seed)  # the new head's (or a random model's) initial weights
    model = build_model(cfg.backbone, len(class_names), "none" if resume else cfg.weights)
    check_input_size(model, cfg.input_size, cfg.backbone)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    lr_factor = world.size if cfg.lr_scale == "linear" else 1
    optimizer, scheduler = make_optimizer(replace(cfg, lr=cfg.lr * lr_factor), model)
    run = Run(model, model, optimizer, scheduler, (), class_names, world)
    if ckpt is not None:
        check_classes(ckpt, class_names, out / "last.pt")
        model.load_state_dict(ckpt["model"])
        fused = [group["fused"] for group in optimizer.param_groups]
        optimizer.load_state_dict(ckpt["optimizer"])
        for group, flag in zip(optimizer.param_groups, fused, strict=True):
            group["fused"] = flag  # how to step is this run's choice, not the checkpoint's
        scheduler.load_state_dict(ckpt["scheduler"])
        run.history, run.best, run.first_epoch = ckpt["history"], ckpt["best"], ckpt["epoch"]
    if world.enabled:
        ids = [device.index] if device.type == "cuda" else None
        run.net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        run.net = torch.compile(run.net, mode=compile_mode(device, world))
    run.feeders = make_feeders(cfg, train_rs, val_rs, device, world)
    kind = GraphedStep if cfg.cuda_graphs else EagerStep
    run.step = kind(run.net, optimizer, cfg.amp)
    return run


def mark_best(cfg: TrainConfig, run: Run, row: dict) -> bool:
    """Whether ``row`` is the best epoch so far (then recorded as ``run.best``)."""
    improved = _better(cfg.best_metric, row[cfg.best_metric], run.best)
    if improved:
        run.best = {"epoch": row["epoch"], "metric": cfg.best_metric, "value": row[cfg.best_metric]}
    return improved


def live_state(run: Run) -> dict:
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
    }


def save_epoch(cfg: TrainConfig, run: Run, row: dict) -> None:
    """Writes last.pt, best.pt/model.pth when the epoch is the best so far, and the logs."""
    improved = mark_best(cfg, run, row)
    if run.world.is_main:
        write_epoch(cfg, run, row, improved, live_state(run), run.history, run.best)


def write_epoch(cfg, run: Run, row, improved, state: dict, history: list, best: dict) -> None:
    """The files of the epoch of ``row``: ``state`` holds its model, optimizer and scheduler
    state, ``history`` and ``best`` the rows and best epoch up to it."""
    out = Path(cfg.out)
    checkpoint = {
        "format": "rcnn-checkpoint",
        "epoch": row["epoch"] + 1,
        "config": run.requested or asdict(cfg),
        "classes": run.class_names,
        **state,
        "history": history,
        "best": best,
    }
    save_checkpoint(out / "last.pt", checkpoint)
    atomic_write_json(out / "config.json", asdict(cfg))  # what was run, with the first epoch
    if improved:  # best.pt is then the same bytes: a hard link saves writing them again
        link_atomic(out / "last.pt", out / "best.pt")
        save_checkpoint(out / "model.pth", state["model"])
    write_history(out, history)


def run_train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict | None:
    """Trains (or resumes) a run in ``cfg.out``; returns the best epoch's history row.

    A new run refuses a folder that holds a run already, unless ``overwrite`` (which deletes
    that run's files first). Under torchrun every process calls this; rank 0 alone prints,
    writes files and returns the row (the others ``None``).
    """
    if cfg.tensorboard:
        summary_writer()  # missing: said before any file is touched, on every rank
    requested = asdict(cfg)
    settings = {**requested, "resume": resume, "overwrite": overwrite}
    with run_stage("rcnn train", cfg.device, settings) as stage:
        device = resolve_device(stage.device)
        configure_device(device)
        cfg = for_device(cfg, device, stage.world)
        if not stage.world.is_main:
            cfg = replace(cfg, progress=False)
        stage.claim(cfg.out, None if resume else lambda out: claim_run_folder(out, overwrite))
        best = _train(cfg, resume, stage.world, device, requested)
        return best if stage.world.is_main else None


def _train(cfg: TrainConfig, resume: bool, world: World, device, requested: dict) -> dict:
    run = setup_run(cfg, resume, world, device)
    run.requested = requested
    say = print if world.is_main else (lambda *a, **k: None)
    if run.first_epoch:
        if run.first_epoch >= cfg.epochs:
            raise ConfigError(
                f"--epochs {cfg.epochs}: {cfg.out} has already trained {run.first_epoch} "
                "epochs; pass a larger --epochs to continue it"
            )
        say(f"Resuming {cfg.out} after epoch {run.first_epoch - 1}")
    start = time.time()
    with contextlib.ExitStack() as stack, reuse_freed_memory(enabled=device.type == "cpu"):
        if cfg.tensorboard and world.is_main:
            run.board = Board(cfg.out, run.class_names, run.first_epoch)
            stack.callback(run.board.close)
        if cfg.overlap_val:
            train_overlapped(cfg, run)
        else:
            for epoch in range(run.first_epoch, cfg.epochs):
                train_epoch(cfg, run, epoch)
    barrier()
    elapsed = time.time() - start
    best = run.best
    say(f"Training complete in {minutes_seconds(elapsed)}")
    say(f"Best val Acc: {max(r['val_acc'] for r in run.history):.6f}")
    say(
        f"Best val {best['metric'][4:]}: {best['value']:.6f} (epoch {best['epoch']}), "
        f"weights in {Path(cfg.out) / 'model.pth'}"
    )
    return next((r for r in run.history if r["epoch"] == best["epoch"]), run.history[-1])


def diverged(cfg: TrainConfig, epoch: int, err: TrainingDiverged) -> TrainingDiverged:
    kept = f"{cfg.out}/last.pt keeps epoch {epoch - 1}" if epoch else "nothing was saved"
    return TrainingDiverged(f"epoch {epoch}: {err}; {kept}; try a lower --lr")


def train_epoch(cfg: TrainConfig, run: Run, epoch: int) -> None:
    """One epoch of ``run``, then the scheduler step, the log line and the saved files."""
    seen: list = []
    try:
        row = run_epoch(
            cfg, epoch, run.net, run.feeders, run.optimizer, run.class_names, run.world, run.step,
            seen,
        )  # fmt: skip
    except TrainingDiverged as err:
        raise diverged(cfg, epoch, err) from err
    run.scheduler.step()
    run.history.append(row)
    if run.world.is_main:
        print_epoch(epoch, cfg.epochs, row)
    save_epoch(cfg, run, row)
    if run.board is not None:
        run.board.write(row, *seen[0])


@dataclass
class Pending:
    """An epoch trained, its validation under way."""

    epoch: int
    lr: float
    train: dict
    began: float  # time.perf_counter() when its training began
    validation: PendingValidation


def train_overlapped(cfg: TrainConfig, run: Run) -> None:
    """The epochs of ``run`` (one process), each validated while the next one trains.

    Epoch N's row, log and checkpoint come when epoch N+1's training ends; they hold what the
    plain order gives. Its ``seconds`` are the wall time from its training's start to the
    next one's (to the end of its validation for the last epoch)."""
    device = next(run.model.parameters()).device
    train_stream, val_stream = new_stream(device, True), new_stream(device, False)
    save_stream = new_stream(device, False)
    snapshots = [Snapshot(run.model), Snapshot(run.model)]
    saver, pending, finished = Saver(), None, False

    def publish(done: Pending, ended: float) -> None:
        probs, labels, loss_sum = done.validation.finish()
        val = metrics_of(probs, labels, loss_sum, run.class_names)
        row = history_row(done.epoch, done.lr, done.train, val, ended - done.began)
        if run.board is not None:
            run.board.write(row, probs, labels)
        run.history.append(row)
        print_epoch(done.epoch, cfg.epochs, row)
        improved = mark_best(cfg, run, row)
        history, best, snapshot = list(run.history), dict(run.best), done.validation.snapshot
        saver.submit(
            lambda: write_epoch(cfg, run, row, improved, snapshot.state(save_stream), history, best)
        )

    if train_stream is not None:
        train_stream.wait_stream(torch.cuda.current_stream(device))
    try:
        with stream_context(train_stream):
            for epoch in range(run.first_epoch, cfg.epochs):
                began = time.perf_counter()
                lr = run.optimizer.param_groups[0]["lr"]
                alongside = pending.validation.advance if pending else None
                try:
                    train = train_part(
                        cfg, epoch, run.net, run.feeders, run.optimizer, run.world, run.step,
                        alongside,
                    )  # fmt: skip
                except TrainingDiverged as err:
                    if pending:  # the epoch before was good: its files are written first
                        publish(pending, began)
                        saver.join()
                    raise diverged(cfg, epoch, err) from err
                if pending:
                    publish(pending, began)
                run.scheduler.step()
                # The other snapshot may still be read by the writer; this one was written
                # when the last checkpoint was submitted (a submit waits for the one before).
                snapshot = snapshots[epoch % 2]
                snapshot.take(epoch, run.model, run.optimizer, run.scheduler)
                validation = PendingValidation(snapshot, run.feeders[1], cfg.amp, val_stream)
                pending = Pending(epoch, lr, train, began, validation)
            if pending:
                publish(pending, time.perf_counter())
        finished = True
    finally:
        if train_stream is not None:
            torch.cuda.current_stream(device).wait_stream(train_stream)
        try:
            saver.join()
        except Exception:
            if finished:  # the run ended well but its files did not: say so
                raise
            logger.exception("writing a checkpoint failed too")


RESUMABLE = {
    "epochs",
    "cuda_graphs",
    "overlap_val",
    "data",
    "workers",
    "device",
    "pipeline",
    "amp",
    "val_batch",
    "compile",
    "channels_last",
    "progress",
    "tensorboard",
}


def resume_config(run: str | Path, **overrides) -> TrainConfig:
    """The config of the run in ``run`` (from its ``last.pt``), with the flags of
    :data:`RESUMABLE` overridden; any other flag must repeat the run's own value."""
    cfg = config_from_checkpoint(load_checkpoint(Path(run) / "last.pt"))
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for name, value in overrides.items():
        if name not in RESUMABLE and value != getattr(cfg, name):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} {value}: {run} was trained with {flag} {getattr(cfg, name)} and a "
                f"resumed run keeps it (resuming may change only "
                f"{', '.join('--' + n.replace('_', '-') for n in sorted(RESUMABLE))}); "
                "start a new run to change it"
            )
    return replace(cfg, out=str(run), **overrides)


RUN_FILES = ("config.json", "metrics.csv", "curves.png", "last.pt", "best.pt", "model.pth")


def claim_run_folder(out: Path, overwrite: bool) -> None:
    """Refuses a folder that holds a run, or with ``overwrite`` deletes that run's files."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if not found:
        return
    if not overwrite:
        raise RcnnError(
            f"--out {out} already holds a run ({', '.join(found)}); continue it with "
            f"`rcnn train --resume {out}`, or pass --overwrite to replace it"
        )
    for name in found:
        (out / name).unlink()
    if (out / BOARD).is_dir():  # the replaced run's curves would mix with the new ones
        shutil.rmtree(out / BOARD)
        found.append(BOARD + "/")
    logger.warning("--overwrite: deleted %s from %s", ", ".join(found), out)


def config_from_checkpoint(ckpt: dict) -> TrainConfig:
    """The run's TrainConfig; keys of other versions that it no longer has are ignored."""
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
