"""The GPU-resident training path measured in one process: input, steps, validation, epochs.

On a synthetic region set of the recipe's scale (376 images of 500x375, 526,400 regions,
227x227 warps, batches of 32 + 96), it prints:

1. the ``device`` path's input rate (warp + flip), with float32 and float16 images, and the
   warp's error against OpenCV on the CPU (the ``threads`` path) as the oracle;
2. training-step rates: bfloat16 autocast and float32 with TF32 convolutions (PyTorch's
   default), each with the ``device`` path as it is (indices and flips uploaded once per
   pass) and as it was (each batch's indices and flips copied to the GPU on their own, a
   sync per step); ``--every-variant`` adds strict float32, TF32 matmuls, NCHW and float16
   images; plus the model alone on one fixed batch, the ceiling for the input path;
3. validation rates at batch 1024 and 256, copying probabilities to the host at the end or
   per batch (the previous code);
4. the GPU's busy share of training steps, from the profiler;
5. the recipe's 25 epochs projected from those rates, and with ``rcnn train --compile``;
6. with ``--epoch``, one real ``rcnn train`` epoch with the defaults and one with
   ``--compile``: wall time and nvidia-smi's peak memory and mean utilization;
7. with ``--schedules`` (alone): training steps launched kernel by kernel against the same
   step replayed as a CUDA graph, then real ``rcnn train`` runs: ``--cuda-graphs
   --overlap-val`` for ``--schedule-epochs`` epochs (each epoch validated while the next one
   trains; 8 epochs cross the learning-rate step, which captures the step again), the previous
   order (``--no-cuda-graphs --no-overlap-val``) and graphs alone (now the default), 2 epochs
   each; per-epoch seconds and metrics side by side, and the 25 epochs projected from each.

    python benchmarks/bench_gpu.py --epoch --json-out gpu.json     # on a CUDA machine
    python benchmarks/bench_gpu.py --schedules --json-out schedules.json
    python benchmarks/bench_gpu.py --device cpu --images 4 --regions-per-image 300 --steps 2 \\
        --val-batches 2 --no-compile                                # a smoke test on the CPU
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rcnn.bench import make_scale_regions, time_batches
from rcnn.data.feeders import DeviceFeeder, DeviceImages, ThreadFeeder, chunks, warp_regions
from rcnn.data.regions import RegionSet
from rcnn.data.sampler import BalancedBatchSampler
from rcnn.data.warps import ImageStore, random_flip
from rcnn.evaluation.predict import predict
from rcnn.modeling.model import build_model, normalization
from rcnn.runtime.device import autocast, configure_device
from rcnn.runtime.distributed import SINGLE
from rcnn.training.config import TrainConfig
from rcnn.training.run import compile_mode, make_optimizer
from rcnn.training.steps import EagerStep, GraphedStep

RECIPE_TRAIN_REGIONS, RECIPE_VAL_REGIONS, RECIPE_EPOCHS = 530_000, 480_000, 25
REPORT: dict = {}


def log(*parts) -> None:
    print(*parts, flush=True)


class PerBatchUpload(DeviceFeeder):
    """The previous ``DeviceFeeder``: each batch's indices and flips copied to the GPU on their
    own, each a blocking copy that waits for the GPU's queue to drain."""

    def iterate(self, flips=None):
        for batch in self.batches:
            index = torch.as_tensor(batch, device=self.image_index.device)
            warped = warp_regions(
                self.images, self.image_index[index], self.boxes[index], self.size, self.pad
            )
            if flips is not None:
                warped = random_flip(warped, flips)
            yield warped, self.labels[index]


def feeder_of(kind: str, regions, images, batches) -> DeviceFeeder:
    """``one-upload``: the ``device`` path (indices and flips uploaded once per pass);
    ``per-batch``: the previous code."""
    kind = PerBatchUpload if kind == "per-batch" else DeviceFeeder
    return kind(regions, images, batches, 227)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def new_model(device, channels_last=True):
    torch.manual_seed(0)
    model = build_model("alexnet", 2, "none")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    optimizer, _ = make_optimizer(TrainConfig(), model)
    return model, optimizer


def train_step(model, optimizer, device, amp):
    def step(images, labels):
        with autocast(device, amp):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def step_rate(feeder, device, steps, amp, channels_last=True, model=None, warmup=5) -> float:
    """Regions/s of full training steps over ``feeder`` (best of two timings)."""
    if model is None:
        model, optimizer = new_model(device, channels_last)
    else:
        model, optimizer = model
    step = train_step(model, optimizer, device, amp)
    best = 0.0
    for _ in range(2):
        flips = torch.Generator().manual_seed(0)
        count, seconds = time_batches(feeder.iterate(flips), device, steps, warmup, step)
        best = max(best, count / seconds)
        warmup = 1
    return best


class Repeat:
    """One fixed batch, over and over: the model's own speed, no input path."""

    def __init__(self, batch):
        self.batch = batch

    def iterate(self, flips=None):
        while True:
            yield self.batch


def set_tf32(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def section_input(device, store, regions, mean, std, sampler, steps) -> dict:
    out = {}
    kinds = {"float32": torch.float32}
    if device.type == "cuda":
        kinds["float16"] = torch.float16
    images = {}
    for name, dtype in kinds.items():
        start = time.perf_counter()
        images[name] = DeviceImages(store, device, mean, std, dtype)
        sync(device)
        upload = time.perf_counter() - start
        feeder = DeviceFeeder(regions, images[name], sampler, 227)
        flips = torch.Generator().manual_seed(0)
        count, seconds = time_batches(feeder.iterate(flips), device, 4 * steps, 3)
        out[f"input_{name}_regions_per_s"] = round(count / seconds)
        out[f"images_{name}_upload_s"] = round(upload, 2)
        log(f"input, {name} images: {count / seconds:,.0f} regions/s (upload {upload:.2f} s)")
    # The warp against OpenCV on the CPU: the same 256 regions, no flips.
    index = np.arange(0, len(regions), max(1, len(regions) // 256))[:256]
    oracle = next(
        iter(ThreadFeeder(regions, store, [index], 227, 0, torch.device("cpu"), mean, std))
    )
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    for name in kinds:
        warped = next(iter(DeviceFeeder(regions, images[name], [index], 227)))[0].cpu()
        diff = (warped - oracle[0])[inner].abs()
        out[f"warp_{name}_vs_opencv_mean_abs"] = float(diff.mean())
        out[f"warp_{name}_vs_opencv_max_abs"] = float(diff.max())
        log(f"warp, {name} images vs OpenCV: mean |diff| {diff.mean():.4f}, max {diff.max():.3f}")
    return out, images


def section_train(device, regions, images, sampler, steps, every) -> dict:
    out = {}
    cuda = device.type == "cuda"
    variants = [("bf16 autocast", dict(amp=True))]
    if cuda:
        variants += [
            ("bf16 autocast, per-batch upload (previous)", dict(amp=True, feeder="per-batch")),
            ("fp32, TF32 convolutions (PyTorch default)", dict(amp=False)),
            ("fp32 TF32 convs, per-batch upload (previous)", dict(amp=False, feeder="per-batch")),
        ]
    if cuda and every:
        variants += [
            ("fp32 strict (no TF32)", dict(amp=False, tf32=(False, False))),
            ("TF32 convolutions and matmuls", dict(amp=False, tf32=(True, True))),
            ("bf16 autocast, NCHW", dict(amp=True, channels_last=False)),
            ("bf16 autocast, float16 images", dict(amp=True, images="float16")),
        ]
    for name, opts in variants:
        set_tf32(*opts.get("tf32", (False, True)))
        source = images[opts.get("images", "float32")]
        feeder = feeder_of(opts.get("feeder", "one-upload"), regions, source, sampler)
        rate = step_rate(feeder, device, steps, opts["amp"], opts.get("channels_last", True))
        out[name] = round(rate, 1)
        log(f"train steps, {name}: {rate:,.1f} regions/s")
    set_tf32(False, True)
    flips = torch.Generator().manual_seed(0)
    batch = next(feeder_of("one-upload", regions, images["float32"], sampler).iterate(flips))
    for amp in (True, False):
        rate = step_rate(Repeat(batch), device, steps, amp)
        name = f"model alone on one batch, {'bf16' if amp else 'fp32 TF32 convs'}"
        out[name] = round(rate, 1)
        log(f"train steps, {name}: {rate:,.1f} regions/s")
    return out


def val_rate(model, feeder, warm, amp, run=predict) -> float:
    run(model, warm, amp, False)
    sync(next(model.parameters()).device)
    start = time.perf_counter()
    probs = run(model, feeder, amp, False)[0]
    sync(next(model.parameters()).device)
    return len(probs) / (time.perf_counter() - start)


def section_val(device, regions, images, batches) -> dict:
    out = {}
    model = new_model(device)[0].eval()
    regions_count = min(len(regions), batches * 256)
    variants = [
        ("val bf16, batch 1024", True, 1024, "one-upload"),
        ("val bf16, batch 256, host copy per batch (previous)", True, 256, "per-batch"),
        ("val fp32 TF32 convs, batch 1024", False, 1024, "one-upload"),
        ("val fp32 TF32 convs, batch 256, host copy per batch (previous)", False, 256, "per-batch"),
    ]
    for name, amp, size, kind in variants:
        order = chunks(np.arange(regions_count), size)
        feeder = feeder_of(kind, regions, images["float32"], order)
        warm = feeder_of(kind, regions, images["float32"], order[:3])
        run = legacy_predict if kind == "per-batch" else predict
        rate = val_rate(model, feeder, warm, amp, run)
        out[name] = round(rate, 1)
        log(f"{name}: {rate:,.1f} regions/s")
    return out


@torch.no_grad()
def legacy_predict(model, feeder, amp=False, progress=False):
    """The previous ``predict``: each batch's probabilities copied to the host as it ends."""
    device = next(model.parameters()).device
    probs = []
    for images, _ in feeder:
        with autocast(device, amp):
            logits = model(images).float()
        probs.append(logits.softmax(1).cpu())
    return torch.cat(probs).numpy(), None, None


def section_profile(device, regions, images, sampler) -> dict:
    """Share of wall time in which a GPU kernel ran, over 20 bf16 training steps."""
    from torch.profiler import ProfilerActivity, profile

    feeder = DeviceFeeder(regions, images["float32"], sampler, 227)
    model, optimizer = new_model(device)
    step = train_step(model, optimizer, device, True)
    batches = feeder.iterate(torch.Generator().manual_seed(0))
    for _ in range(5):
        step(*next(batches))
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(20):
            step(*next(batches))
        sync(device)
        wall = time.perf_counter() - start
    # Kernels (and copies) are the profiler's events on the CUDA device; one stream, no overlap.
    kernel_us = sum(
        event.device_time_total
        for event in prof.events()
        if event.device_type == torch.autograd.DeviceType.CUDA
    )
    averaged_us = sum(row.self_device_time_total for row in prof.key_averages())
    busy = kernel_us / 1e6 / wall
    log(f"profiler: kernels {kernel_us / 1e3:.1f} ms in {wall * 1e3:.1f} ms wall: busy {busy:.1%}")
    log(f"profiler: self device time of all ops {averaged_us / 1e3:.1f} ms (cross-check)")
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=12)
    log(table)
    return {
        "profile_kernel_ms": round(kernel_us / 1e3, 1),
        "profile_self_device_ms": round(averaged_us / 1e3, 1),
        "profile_wall_ms": round(wall * 1e3, 1),
        "profile_busy": round(busy, 3),
    }


def projection(train_rate: float, val_rate: float) -> float:
    seconds = RECIPE_EPOCHS * (RECIPE_TRAIN_REGIONS / train_rate + RECIPE_VAL_REGIONS / val_rate)
    return round(seconds / 60, 2)


class SmiPoller:
    """nvidia-smi's memory and utilization every 200 ms, in the background."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.proc = subprocess.Popen(
            [
                "nvidia-smi",
                "--query-gpu=memory.used,utilization.gpu",
                "--format=csv,noheader,nounits",
                "-lms",
                "200",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                memory, util = (float(v) for v in line.split(","))
            except ValueError:
                continue
            self.samples.append((memory, util))

    def stop(self) -> dict:
        self.proc.terminate()
        self.thread.join(timeout=5)
        busy = [u for _, u in self.samples if u > 0]
        return {
            "smi_peak_memory_mib": max((m for m, _ in self.samples), default=None),
            "smi_mean_utilization_pct": round(float(np.mean(busy)), 1) if busy else None,
        }


def section_epoch(device, data: Path, work: Path, flags: list[str]) -> dict:
    """One real `rcnn train` epoch in a fresh process: wall time, epoch time, peak memory."""
    run = work / f"run{len(list(work.glob('run*')))}"
    cmd = [sys.executable, "-m", "rcnn", "train", "--data", str(data), "--out", str(run)]
    cmd += ["--epochs", "1", "--weights", "none", "--no-progress", "--device", str(device)]
    cmd += flags
    poller = SmiPoller() if device.type == "cuda" else None
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    out = poller.stop() if poller else {}
    log(result.stdout[-600:], result.stderr[-2000:])
    if result.returncode:
        return {"epoch_error": result.stderr[-500:]}
    rows = (run / "metrics.csv").read_text().splitlines()
    seconds = float(rows[1].split(",")[-1])
    config = json.loads((run / "config.json").read_text())
    out.update(epoch_wall_s=round(wall, 1), epoch_seconds=seconds)
    out.update({key: config[key] for key in ("amp", "val_batch", "compile", "pipeline")})
    log(f"rcnn train 1 epoch {' '.join(flags)}: {seconds:.1f} s epoch, {wall:.1f} s wall, {out}")
    return out


def forever(feeder):
    """The feeder's batches, pass after pass."""
    flips = torch.Generator().manual_seed(0)
    while True:
        yield from feeder.iterate(flips)


def section_graph_steps(device, regions, images, sampler, steps) -> dict:
    """bf16 training steps through the library's own step objects: kernel by kernel
    (:class:`EagerStep`) and replayed as a CUDA graph (:class:`GraphedStep`)."""
    out = {}
    for name, kind in (("eager", EagerStep), ("CUDA graph", GraphedStep)):
        model, optimizer = new_model(device)
        step = kind(model, optimizer, True)
        batches = forever(DeviceFeeder(regions, images, sampler, 227))
        for _ in range(5):  # warm-up (and the capture)
            step(*next(batches))
        sync(device)
        best = 0.0
        for _ in range(2):
            start = time.perf_counter()
            for _ in range(steps):
                step(*next(batches))
            sync(device)
            best = max(best, steps * 128 / (time.perf_counter() - start))
        out[f"steps {name}, bf16"] = round(best, 1)
        log(f"training steps ({kind.__name__}), bf16: {best:,.1f} regions/s")
    out["graph speed-up"] = round(out["steps CUDA graph, bf16"] / out["steps eager, bf16"], 3)
    return out


def section_run(device, data: Path, work: Path, flags: list[str], epochs: int) -> dict:
    """A real `rcnn train` run of ``epochs`` epochs in a fresh process: every epoch's seconds
    and metrics, the wall time, the start-up (wall minus the epochs) and nvidia-smi's peak
    memory and mean utilization; the 25 epochs projected from its last epochs."""
    run = work / f"run{len(list(work.glob('run*')))}"
    cmd = [sys.executable, "-m", "rcnn", "train", "--data", str(data), "--out", str(run)]
    cmd += ["--epochs", str(epochs), "--weights", "none", "--no-progress"]
    cmd += ["--device", str(device), *flags]
    poller = SmiPoller() if device.type == "cuda" else None
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    out = poller.stop() if poller else {}
    log(result.stdout[-1500:], result.stderr[-3000:])
    if result.returncode:
        return {"error": result.stderr[-800:]}
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    config = json.loads((run / "config.json").read_text())
    seconds = [float(r["seconds"]) for r in rows]
    keep = ("train_loss", "train_acc", "val_loss", "val_acc", "val_object_ap")
    steady = sorted(seconds[1:] or seconds)[len(seconds[1:] or seconds) // 2]  # median
    out.update(
        flags=" ".join(flags) or "defaults",
        wall_s=round(wall, 1),
        startup_s=round(wall - sum(seconds), 1),
        epoch_seconds=seconds,
        steady_epoch_s=steady,
        projected_25_epochs_min=round((wall + (RECIPE_EPOCHS - epochs) * steady) / 60, 2),
        rows=[{k: round(float(r[k]), 5) for k in keep} for r in rows],
    )
    out.update({k: config[k] for k in ("amp", "val_batch", "cuda_graphs", "overlap_val")})
    log(f"rcnn train {epochs} epochs, {out['flags']}: " + json.dumps(out))
    return out


def schedules(args, device, regions, store, sampler, data, work, begin) -> None:
    mean, std = normalization("alexnet")
    images = DeviceImages(store, device, mean, std, torch.float32)
    try:
        REPORT["graph steps"] = section_graph_steps(device, regions, images, sampler, args.steps)
    except Exception as err:  # report and go on to the real runs
        log(f"graph steps failed: {type(err).__name__}: {err}")
        REPORT["graph steps"] = {"error": f"{type(err).__name__}: {err}"}
    save(args.json_out)
    del images
    torch.cuda.empty_cache()
    runs = [
        (
            "graphs and overlapped validation",
            ["--cuda-graphs", "--overlap-val"],
            args.schedule_epochs,
        ),
        ("previous order", ["--no-cuda-graphs", "--no-overlap-val"], 2),
        ("graphs alone (the default)", ["--cuda-graphs", "--no-overlap-val"], 2),
    ]
    for name, flags, epochs in runs:
        if time.perf_counter() - begin > args.budget:
            log(f"skipped {name}: past --budget")
            continue
        REPORT[f"run, {name}"] = section_run(device, data, work, flags, epochs)
        save(args.json_out)
    first = {name: REPORT.get(f"run, {name}", {}).get("rows", [None])[0] for name, _, _ in runs}
    log("epoch 0 of each run: " + json.dumps(first))


def section_compile(device, regions, images, sampler, steps, batches) -> dict:
    """`rcnn train --compile`'s mode on one GPU: training steps, then validation batches."""
    mode = compile_mode(device, SINGLE)
    feeder = feeder_of("one-upload", regions, images["float32"], sampler)
    model, optimizer = new_model(device)
    compiled = torch.compile(model, mode=mode)
    step = train_step(compiled, optimizer, device, True)
    batches_iter = feeder.iterate(torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for _ in range(3):
        step(*next(batches_iter))
    sync(device)
    compile_s = time.perf_counter() - start
    rate = step_rate(feeder, device, steps, True, model=(compiled, optimizer))
    log(f"torch.compile mode={mode}: {rate:,.1f} regions/s, compiled in {compile_s:.1f} s")
    order = chunks(np.arange(min(len(regions), batches * 256)), 1024)
    compiled.eval()
    start = time.perf_counter()
    val = val_rate(
        compiled,
        feeder_of("one-upload", regions, images["float32"], order),
        feeder_of("one-upload", regions, images["float32"], order[:3]),
        True,
    )
    log(f"torch.compile mode={mode}, val bf16 batch 1024: {val:,.1f} regions/s")
    return {
        "compile mode": mode,
        "compile train regions_per_s": round(rate, 1),
        "compile train compile_s": round(compile_s, 1),
        "compile val regions_per_s": round(val, 1),
        "compile val wall_s (compile included)": round(time.perf_counter() - start, 1),
    }


def save(path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(REPORT, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=376)
    parser.add_argument("--regions-per-image", type=int, default=1400)
    parser.add_argument("--steps", type=int, default=100, help="timed training steps a variant")
    parser.add_argument("--val-batches", type=int, default=100, help="validation batches of 256")
    parser.add_argument(
        "--every-variant", action="store_true", help="also strict fp32, TF32, NCHW, fp16 images"
    )
    parser.add_argument("--epoch", action="store_true", help="one real `rcnn train` epoch, twice")
    parser.add_argument(
        "--only-epoch", action="store_true", help="only one `rcnn train` epoch with the defaults"
    )
    parser.add_argument(
        "--schedules", action="store_true", help="graphs and overlapped validation (alone)"
    )
    parser.add_argument("--schedule-epochs", type=int, default=8, help="epochs of the defaults")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--budget", type=float, default=400, help="seconds; later parts skipped")
    parser.add_argument("--json-out", help="write every number here too")
    args = parser.parse_args()

    begin = time.perf_counter()
    device = torch.device(args.device)
    configure_device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        REPORT["gpu"] = props.name
        REPORT["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    REPORT["torch"], REPORT["cuda"] = torch.__version__, torch.version.cuda
    log(json.dumps(REPORT))
    mean, std = normalization("alexnet")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_scale_regions(work / "scale", args.images, args.regions_per_image)
        regions = RegionSet.load(data / "train")
        store = ImageStore(regions.image_paths, os.cpu_count() or 2)
        sampler = BalancedBatchSampler(regions.labels, 32, 96, 0)
        log(
            f"data: {len(store)} images, {len(regions):,} regions "
            f"({time.perf_counter() - begin:.0f} s)"
        )
        if args.schedules:
            schedules(args, device, regions, store, sampler, data, work, begin)
            REPORT["total_s"] = round(time.perf_counter() - begin, 1)
            save(args.json_out)
            log(json.dumps(REPORT, indent=1))
            return
        if args.only_epoch:
            REPORT["epoch defaults"] = section_epoch(device, data, work, [])
            save(args.json_out)
            log(json.dumps(REPORT, indent=1))
            return
        found, images = section_input(device, store, regions, mean, std, sampler, args.steps)
        REPORT.update(found)
        save(args.json_out)
        train = section_train(device, regions, images, sampler, args.steps, args.every_variant)
        REPORT["train"] = train
        save(args.json_out)
        REPORT["val"] = val = section_val(device, regions, images, args.val_batches)
        save(args.json_out)
        if device.type == "cuda":
            try:
                REPORT.update(section_profile(device, regions, images, sampler))
            except Exception as err:  # report and go on
                log(f"profiler failed: {type(err).__name__}: {err}")
        projections = {
            "default (bf16, val batch 1024)": ("bf16 autocast", "val bf16, batch 1024"),
            "previous default (fp32, per-batch uploads, val batch 256)": (
                "fp32 TF32 convs, per-batch upload (previous)",
                "val fp32 TF32 convs, batch 256, host copy per batch (previous)",
            ),
        }
        for name, (t, v) in projections.items():
            if t in train and v in val:
                minutes = projection(train[t], val[v])
                REPORT[f"projected recipe minutes, {name}"] = minutes
                log(f"projected 25-epoch recipe, {name}: {minutes} min")
        save(args.json_out)
        if device.type == "cuda" and not args.no_compile:
            try:
                found = section_compile(
                    device, regions, images, sampler, args.steps, args.val_batches
                )
                REPORT.update(found)
                minutes = projection(
                    found["compile train regions_per_s"], found["compile val regions_per_s"]
                )
                REPORT["projected recipe minutes, --compile"] = minutes
                log(f"projected 25-epoch recipe, --compile: {minutes} min")
            except Exception as err:  # report and go on: the numbers above are what matter
                log(f"torch.compile failed: {type(err).__name__}: {err}")
            save(args.json_out)
        del images
        if args.epoch:
            for flags in ([], ["--compile"]):
                if flags and (args.no_compile or time.perf_counter() - begin > args.budget):
                    log(f"skipped the epoch with {flags}")
                    continue
                REPORT[f"epoch {' '.join(flags) or 'defaults'}"] = section_epoch(
                    device, data, work, flags
                )
                save(args.json_out)
    REPORT["total_s"] = round(time.perf_counter() - begin, 1)
    save(args.json_out)
    log(json.dumps(REPORT, indent=1))


if __name__ == "__main__":
    main()
