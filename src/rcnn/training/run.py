"""A training run: its settings decided for the device, its data feeders, model and
optimizer, built fresh or resumed from ``last.pt``, and the folder it owns."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from rcnn.data.feeders import chunks, make_feeder
from rcnn.data.regions import RegionSet, load_train_val
from rcnn.data.sampler import BalancedBatchSampler
from rcnn.errors import ConfigError, RcnnError
from rcnn.modeling.checkpoint import check_classes, load_checkpoint
from rcnn.modeling.model import ModelSpec, build_model, check_input_size, parameter_groups
from rcnn.runtime.config import CPU_BATCH, CUDA_BATCH
from rcnn.runtime.device import amp_dtype, default_amp
from rcnn.runtime.distributed import FILES, SINGLE, World, agree
from rcnn.training.board import FOLDER as BOARD
from rcnn.training.board import Board
from rcnn.training.config import TrainConfig
from rcnn.training.steps import EagerStep, GraphedStep

logger = logging.getLogger(__name__)


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
    # Off unless asked: where training alone keeps the GPU busy, validating alongside saves
    # nothing and delays each log by an epoch (docs/performance.md).
    overlap = bool(cfg.overlap_val)
    return replace(cfg, amp=amp, val_batch=val_batch, cuda_graphs=cuda_graphs, overlap_val=overlap)


def compile_mode(device: torch.device, world) -> str | None:
    """CUDA graphs (``reduce-overhead``) on one GPU, where launching AlexNet's kernels one by
    one from Python is a large part of a step; torch's default mode elsewhere."""
    return "reduce-overhead" if device.type == "cuda" and not world.enabled else None


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


RUN_FILES = ("config.json", "metrics.csv", "curves.png", "last.pt", "best.pt", "model.pth",
             "initial.pt", "checkpoints.json")  # fmt: skip


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
    logger.warning("replacing the run in %s: deleted %s", out, ", ".join(found))


def config_from_checkpoint(ckpt: dict) -> TrainConfig:
    """The run's TrainConfig; keys of other versions that it no longer has are ignored."""
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
