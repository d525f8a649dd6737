"""``rcnn train``, ``rcnn evaluate``, ``rcnn compare``, ``rcnn demo`` and ``rcnn bench``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from rcnn.cli.common import (
    add_amp,
    add_config_flags,
    add_device,
    add_inference_flags,
    add_model,
    add_progress,
    config_from,
    default,
    inference,
    parser,
)
from rcnn.demo import DemoConfig, run_demo
from rcnn.errors import ConfigError
from rcnn.evaluation.config import VisualizeConfig
from rcnn.training.config import (
    BEST_METRICS,
    OPTIMIZERS,
    PIPELINES,
    PRESETS,
    TrainConfig,
    train_config,
)

# Training flags default to None, so that a preset (or a resumed run) supplies what the user
# did not set; their help shows TrainConfig's own default.
_TRAIN_FLAGS = [
    ("--backbone", str, "torchvision classifier: alexnet, vgg16, resnet50, mobilenet_v3_large; "
     "or alexnet_tiny, AlexNet's shape at ~0.1M parameters (no pretrained weights)"),
    ("--weights", str, "imagenet (downloaded once by torchvision), none (random init), or a "
     "path to a state dict"),
    ("--epochs", int, "epochs"),
    ("--lr", float, "learning rate"),
    ("--momentum", float, "SGD momentum"),
    ("--weight-decay", float, "L2 weight decay"),
    ("--lr-step", int, "StepLR step in epochs"),
    ("--lr-gamma", float, "StepLR factor"),
    ("--head-lr-mult", float, "lr multiplier of the new layer"),
    ("--num-pos", int, "object regions per batch"),
    ("--num-neg", int, "background regions per batch"),
    ("--input-size", int, "warp size in pixels"),
    ("--context-pad", int, "pixels of context around each warped region (R-CNN used 16)"),
    ("--val-max", int, "validate on a fixed subset of this many regions (0 = all)"),
    ("--val-batch", int, "regions per validation batch (0: 1024 on CUDA, 256 elsewhere)"),
    ("--workers", int, "warping threads or worker processes"),
    ("--seed", int, "seed of sampling, flips and dropout"),
]  # fmt: skip


def add_train(sub) -> None:
    p = parser(
        sub,
        "train",
        "fine-tune a CNN on the prepared regions",
        "Fine-tune an ImageNet classifier (AlexNet by default) on warped regions "
        "with balanced batches (32 object + 96 background regions), validating on the whole "
        "val split every epoch. Writes RUN/config.json, metrics.csv, curves.png, last.pt, "
        "best.pt and model.pth (best weights as a plain state dict).\n\nPresets (flags "
        "override them):\n"
        "  seed          the recipe: SGD lr 1e-3 momentum 0.9, StepLR(7, 0.1), 25 epochs\n"
        "  lr-1e-4       remedy 1: lr 1e-4\n"
        "  weight-decay  remedy 2: L2 weight decay 1e-4\n"
        "  adam          remedy 3: Adam (lr 1e-4)\n"
        "  remedies      all three: Adam, lr 1e-4, weight decay 1e-4\n"
        "  paper         Girshick et al.: context pad 16, weight decay 5e-4, 10x lr on the "
        "new layer",
    )
    p.add_argument("--data", help="`rcnn prepare` output folder (with train/ and val/)")
    p.add_argument("--out", help="run folder to write")
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue RUN from its last.pt (its config is reused; --epochs may extend it)",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="hyper-parameters (default seed)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (its checkpoints, metrics and config)",
    )

    add_training_flags(p)
    add_device(p, None)
    add_amp(p)
    add_progress(p)


def add_training_flags(p, skip=()) -> None:
    """Every TrainConfig setting as a flag defaulting to None (the preset's value), except
    ``skip``; the device, precision and progress flags are the caller's."""

    def described(text: str, name: str) -> str:
        return f"{text} (default {default(TrainConfig, name)})"

    for flag, kind, text in _TRAIN_FLAGS:
        if flag in skip:
            continue
        p.add_argument(flag, type=kind, help=described(text, flag[2:].replace("-", "_")))
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=described("optimizer", "optimizer"))
    p.add_argument(
        "--norm",
        choices=["imagenet", "half"],
        help=described(
            "input normalization: the backbone's ImageNet mean/std or the recipe's 0.5/0.5",
            "norm",
        ),
    )
    p.add_argument(
        "--best-metric",
        choices=BEST_METRICS,
        help=described("what best.pt maximises (val_loss is minimised)", "best_metric"),
    )
    p.add_argument(
        "--pipeline",
        choices=PIPELINES,
        help="where regions are warped: device (all images on the GPU, batched roi_align; "
        "auto on CUDA), threads (OpenCV threads into one batch buffer; auto on CPU) or "
        "loader (DataLoader worker processes)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory layout (default on: faster on CPU and GPU)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model; on one GPU with CUDA graphs (reduce-overhead): "
        "faster steps after some seconds of compiling (docs/performance.md)",
    )
    p.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="capture the training step (forward, backward, SGD step) as a CUDA graph and "
        "replay it: one launch a step instead of ~100 (default: on one GPU with SGD and "
        "without --compile)",
    )
    p.add_argument(
        "--overlap-val",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="validate epoch N on a copy of its weights, on a second CUDA stream, while epoch "
        "N+1 trains; the same numbers, each log line and checkpoint an epoch later. Off by "
        "default: where training alone keeps the GPU busy it saves nothing "
        "(docs/performance.md)",
    )
    p.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write TensorBoard event files to RUN/tensorboard each epoch: losses, "
        "accuracies, APs, the lr and the validation precision-recall curves (needs the "
        "tensorboard package: pip install 'rcnn[tensorboard]'; view them with tensorboard "
        "--logdir RUN/tensorboard)",
    )
    p.add_argument(
        "--lr-scale",
        choices=["none", "linear"],
        help=described(
            "under torchrun, linear multiplies --lr by the number of processes", "lr_scale"
        ),
    )


def training_flags(args) -> dict:
    """Every TrainConfig field with a flag of the same name; unset flags are None."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("data", "out")]
    flags = {name: getattr(args, name) for name in names if hasattr(args, name)}
    flags.pop("progress", None)
    return flags


def cmd_train(args) -> None:
    from rcnn.training.run import resume_config
    from rcnn.training.train import run_train

    flags = training_flags(args)
    progress = False if args.no_progress else None
    if args.resume:
        if args.preset is not None:
            raise ConfigError("--preset cannot be combined with --resume RUN")
        if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
            raise ConfigError(
                f"--out {args.out} is not --resume {args.resume}: a resumed run goes on in "
                "its own folder (copy the folder first to continue it elsewhere)"
            )
        cfg = resume_config(args.resume, data=args.data, progress=progress, **flags)
        run_train(cfg, resume=True)
        return
    if not args.data or not args.out:
        raise ConfigError("--data and --out are required (or --resume RUN)")
    preset = args.preset or "seed"
    cfg = train_config(preset, data=args.data, out=args.out, progress=progress, **flags)
    run_train(cfg, overwrite=args.overwrite)


# ----------------------------------------------------------------------- evaluate, compare
def add_evaluate(sub) -> None:
    p = parser(
        sub,
        "evaluate",
        "metrics of a checkpoint on a region set",
        "Evaluate a checkpoint (a run folder means its best.pt) on every region of a "
        "split: loss, accuracy, balanced accuracy, the accuracy the recipe's 32:96 batch mix "
        "would show, per-class precision/recall, average precision and the confusion matrix. "
        "Writes metrics.json, pr.png (precision-recall) and examples.png.",
    )
    add_model(p, "run folder, .pt checkpoint, or model.pth (+ --classes)")
    p.add_argument("--data", required=True, help="`rcnn prepare` output folder or a region store")
    p.add_argument("--split", default="val", help="split inside --data")
    p.add_argument("--out", help="output folder (default: RUN/eval-SPLIT)")
    add_inference_flags(p)
    add_progress(p)


def cmd_evaluate(args) -> None:
    from rcnn.evaluation.evaluate import run_evaluate

    metrics = run_evaluate(
        args.model,
        args.data,
        args.split,
        args.out,
        classes=args.classes,
        inference=inference(args),
        progress=not args.no_progress,
    )
    if metrics is not None:  # rank 0 of torchrun's processes
        print(metrics["report"])
        print(f"metrics, pr.png and examples.png in {metrics['out']}")


def add_visualize(sub) -> None:
    p = parser(
        sub,
        "visualize",
        "the regions that pool5 units like best (the paper's Figure 4)",
        "Treat pool5 units (a channel at one cell of AlexNet's 256 x 6 x 6 map) as object "
        "detectors: score every region of a split, keep each unit's best regions after "
        "non-maximum suppression within an image (IoU 0.3), and draw them as the network saw "
        "them, with the unit's receptive field in white and its activation. Without --unit, "
        "the units of the highest activations over the split, one a channel. Writes "
        "units.png and units.json.",
    )
    add_model(p, "run folder, .pt checkpoint, or model.pth (+ --classes)")
    p.add_argument("--data", required=True, help="`rcnn prepare` output folder or a region store")
    p.add_argument("--split", default=default(VisualizeConfig, "split"), help="split inside --data")
    p.add_argument("--out", help="output folder (default: RUN/units-SPLIT)")
    p.add_argument(
        "--units", type=int, default=default(VisualizeConfig, "units"), help="units to choose"
    )
    p.add_argument(
        "--unit",
        type=int,
        nargs=3,
        action="append",
        metavar=("C", "Y", "X"),
        help="draw this unit (channel, row, column of pool5) instead; repeat for more",
    )
    p.add_argument(
        "--top", type=int, default=default(VisualizeConfig, "top"), help="regions drawn a unit"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a units.json or units.png in --out that rcnn visualize did not write "
        "(an earlier drawing is replaced without it)",
    )
    add_inference_flags(p)
    add_progress(p)


def cmd_visualize(args) -> None:
    from rcnn.evaluation.units import format_units, run_visualize

    summary = run_visualize(
        VisualizeConfig(
            model=args.model,
            data=args.data,
            classes=args.classes,
            split=args.split,
            out=args.out,
            units=args.units,
            unit=[tuple(u) for u in args.unit or []],
            top=args.top,
            inference=inference(args),
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    )
    print(format_units(summary))
    print(f"units.png and units.json in {summary['out']}")


def add_compare(sub) -> None:
    p = parser(
        sub,
        "compare",
        "overlay the curves of several runs",
        "One figure overlaying the validation loss, a metric and the training loss "
        "of several runs, and a table of their best epochs; e.g. the recipe against its three "
        "remedies (presets seed, lr-1e-4, weight-decay, adam).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders of `rcnn train`")
    p.add_argument("--out", default="compare.png", help="figure to write (.png, .pdf or .svg)")
    p.add_argument(
        "--metric",
        default="val_balanced_acc",
        choices=["val_balanced_acc", "val_acc", "val_recipe_acc", "val_object_ap"],
        help="metric that picks each run's best epoch",
    )


def cmd_compare(args) -> None:
    from rcnn.evaluation.evaluate import run_compare

    print(run_compare(args.runs, args.out, args.metric))
    print(f"figure: {args.out}")


DEMO_FLAGS = {
    "out": "folder for everything the demo writes",
    "images": "synthetic images (a third each split)",
    "epochs": "training epochs",
    "input_size": "warp size (the recipe uses 227)",
    "seed": "seed of data and training",
}
BENCH_FLAGS = {
    "workers": "warping threads (threads path) or worker processes (loader path)",
    "input_size": "warp size",
    "backbone": "torchvision classifier (train)",
}


def add_demo(sub) -> None:
    p = parser(
        sub,
        "demo",
        "the whole pipeline, offline, on synthetic data",
        "Synthesize a VOC-format dataset of cars and buses (train, val and test splits), "
        "then run `rcnn pipeline` on it: regions by fast Selective Search, AlexNet fine-tuned "
        "(from ImageNet weights when they are in the torch cache, else from random "
        "initialisation) with Adam at 1e-4 on small warps, the regions evaluated, SVMs on "
        "pool5, fc6 and fc7 before and after fine-tuning, box regression, and the paper's "
        "Table 2 on the test split by the VOC devkit's rules; then draws test images with "
        "their detections. Writes OUT/report.md. A few minutes on a 2-core CPU (see "
        "docs/performance.md); a re-run goes on where the last one stopped.",
    )
    add_config_flags(p, DemoConfig, DEMO_FLAGS)
    p.add_argument(
        "--classes",
        nargs="+",
        default=list(default(DemoConfig, "classes")),
        help="synthetic object classes (VOC names; see `rcnn synth --help`)",
    )
    add_device(p, default(DemoConfig, "device"))
    add_progress(p)


def cmd_demo(args) -> None:
    names = [*DEMO_FLAGS, "classes", "device"]
    run_demo(config_from(args, DemoConfig, names, progress=not args.no_progress))


def add_bench(sub) -> None:
    p = parser(
        sub,
        "bench",
        "regions/s of the input pipeline or of training steps",
        "Measure regions per second of the training input pipeline (`loader`: "
        "warped, flipped, normalized batches on the device) or of full training steps "
        "(`train`: input, forward, backward, optimizer step) on a prepared region set, plus "
        "peak memory. benchmarks/bench_pipeline.py compares both with the naive pipeline in "
        "one run.",
    )
    p.add_argument("what", choices=["loader", "train"], help="what to time")
    p.add_argument("--data", required=True, help="`rcnn prepare` output folder")
    add_device(p)
    p.add_argument(
        "--pipeline",
        choices=PIPELINES,
        default=default(TrainConfig, "pipeline"),
        help="device: batched roi_align on the device; threads: OpenCV threads; "
        "loader: DataLoader worker processes",
    )
    p.add_argument("--batches", type=int, default=20, help="timed batches (after warm-up)")
    add_config_flags(p, TrainConfig, BENCH_FLAGS)
    add_amp(p)
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=default(TrainConfig, "channels_last"),
        help="channels_last layout (train; as in `rcnn train`)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_bench(args) -> None:
    import json

    from rcnn.bench import bench_loader, bench_train

    names = [*BENCH_FLAGS, "data", "device", "pipeline", "amp", "channels_last"]
    cfg = config_from(args, TrainConfig, names, weights="none", progress=False)
    if args.what == "loader":
        result = bench_loader(cfg, args.batches)
    else:
        result = bench_train(cfg, args.batches)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:<16}{value}")
