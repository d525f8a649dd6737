"""The ``rcnn`` command line: one subcommand per pipeline stage.

Each ``_cmd_<name>`` turns parsed flags into the stage's config object and calls its
``run_<name>``; the work lives in the modules, where it can be called and tested alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import traceback
from pathlib import Path

from rcnn import __version__
from rcnn.errors import ConfigError, RcnnError

logger = logging.getLogger("rcnn")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps description layout and appends a flag's default where it has a meaningful one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth",
        formatter_class=_Formatter,
        help="write a synthetic VOC-format car dataset",
        description="Write a synthetic PASCAL VOC2007-layout dataset of scenes with cars among "
        "distractor shapes: JPEGImages/, Annotations/, ImageSets/Main/{train,val}.txt and "
        "car_{train,val}.txt. The same seed gives the same bytes.",
    )
    p.add_argument("out", help="folder to create (its Annotations/ must not exist yet)")
    p.add_argument("--images", type=int, default=200, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--size", default="320x240", help="image size WIDTHxHEIGHT")
    p.add_argument("--val-fraction", type=float, default=0.5, help="share of images in val")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="share of images in a test split (ImageSets/Main/test.txt; 0 = none)",
    )


def _cmd_synth(args) -> None:
    from rcnn.data.synth import make_synthetic_voc

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError as err:
        raise ConfigError(f"--size must look like 320x240, got {args.size!r}") from err
    summary = make_synthetic_voc(
        args.out, args.images, args.seed, (width, height), args.val_fraction, args.test_fraction
    )
    test = f", {summary['test']} test" if summary["test"] else ""
    print(
        f"wrote {summary['images']} images ({summary['train']} train, {summary['val']} val"
        f"{test}, {summary['cars']} cars) to {summary['root']}"
    )


def _add_prepare(sub) -> None:
    from rcnn.data.labels import PRESETS

    p = sub.add_parser(
        "prepare",
        formatter_class=_Formatter,
        help="Selective Search + labelling: VOC images -> region stores",
        description="Run Selective Search on every chosen image of each split (in parallel, "
        "cached by image content), label each proposal by its IoU with the ground truth, and "
        "write OUT/{split}/ region stores plus OUT/summary.json.\n\nPresets:\n"
        "  seed   positive IoU >= 0.5; negative 0 < IoU < 0.5 and area > 1/5 of the largest\n"
        "         ground-truth box; difficult objects left out (the recipe's rule)\n"
        "  paper  Girshick et al. 2014: ground truth added as positives, every proposal with\n"
        "         IoU < 0.5 negative, difficult objects kept\n"
        "Threshold flags override the preset.",
    )
    p.add_argument(
        "--voc-root",
        required=True,
        help="folder holding Annotations/, JPEGImages/, ImageSets/Main/ (e.g. VOCdevkit/VOC2007)",
    )
    p.add_argument("--out", required=True, help="output folder for the region stores")
    p.add_argument(
        "--split",
        nargs="+",
        default=["train", "val"],
        dest="splits",
        help="splits to prepare (ImageSets/Main/{split}.txt)",
    )
    p.add_argument(
        "--classes",
        nargs="+",
        default=["car"],
        help="object classes (labels 1..K in this order); 'all' = the 20 VOC classes",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="seed", help="labelling rules")
    p.add_argument("--pos-iou", type=float, help="positive when best IoU >= this")
    p.add_argument(
        "--neg-iou-min",
        type=float,
        help="negative only when IoU > this (-1 keeps regions that touch no object)",
    )
    p.add_argument("--neg-iou-max", type=float, help="negative only when IoU < this")
    p.add_argument(
        "--neg-min-area",
        type=float,
        dest="neg_min_area_frac",
        help="negative only when area > this x the largest ground-truth box",
    )
    p.add_argument(
        "--mode",
        choices=["quality", "fast"],
        default="quality",
        help="Selective Search strategy (quality: more, slower proposals)",
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=1000,
        help="images whose longer side is larger are shrunk to this for Selective Search, "
        "whose time and memory grow with the pixels (0 = never); boxes are mapped back",
    )
    p.add_argument("--workers", type=int, default=0, help="processes (0 = one per core)")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="proposal cache (default: $RCNN_CACHE_DIR or ~/.cache/rcnn)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at a bad image instead of skipping it with a warning",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_prepare(args) -> None:
    from rcnn.data.labels import label_config
    from rcnn.data.prepare import PrepareConfig, run_prepare
    from rcnn.data.proposals import ProposalConfig

    labels = label_config(
        args.preset,
        pos_iou=args.pos_iou,
        neg_iou_min=args.neg_iou_min,
        neg_iou_max=args.neg_iou_max,
        neg_min_area_frac=args.neg_min_area_frac,
    )
    cfg = PrepareConfig(
        voc_root=args.voc_root,
        out=args.out,
        splits=args.splits,
        classes=args.classes,
        labels=labels,
        proposals=ProposalConfig(args.mode, args.max_side),
        workers=args.workers,
        cache_dir=args.cache_dir,
        strict=args.strict,
        progress=not args.no_progress,
    )
    summary = run_prepare(cfg)
    print(format_prepare_summary(summary, args.out))


def format_prepare_summary(summary: dict, out: str) -> str:
    lines = [
        f"{'split':<8}{'images':>8}{'skipped':>9}{'proposals':>11}{'positives':>11}"
        f"{'negatives':>11}{'seconds':>9}"
    ]
    for split, s in summary["splits"].items():
        lines.append(
            f"{split:<8}{s['images']:>8}{len(s['skipped']):>9}{s['proposals']:>11}"
            f"{s['positives']:>11}{s['negatives']:>11}{s['seconds']:>9.1f}"
        )
    lines.append(
        f"region stores in {out}/{{{','.join(summary['splits'])}}}, summary in {out}/summary.json"
    )
    return "\n".join(lines)


def _add_train(sub) -> None:
    from rcnn.training.config import BEST_METRICS, PRESETS

    p = sub.add_parser(
        "train",
        formatter_class=_Formatter,
        help="fine-tune a CNN on the prepared regions",
        description="Fine-tune an ImageNet classifier (AlexNet by default) on warped regions "
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
    p.add_argument(
        "--preset", choices=sorted(PRESETS), help="hyper-parameters (default seed, the recipe)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (its checkpoints, metrics and config)",
    )
    p.add_argument(
        "--backbone",
        help="torchvision classifier: alexnet (default), vgg16, resnet50, mobilenet_v3_large, ...",
    )
    p.add_argument(
        "--weights",
        help="imagenet (default; downloaded once by torchvision), none "
        "(random init), or a path to a state dict",
    )
    p.add_argument("--epochs", type=int, help="epochs (default 25)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="default sgd")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay (default 0)")
    p.add_argument("--lr-step", type=int, help="StepLR step in epochs (default 7)")
    p.add_argument("--lr-gamma", type=float, help="StepLR factor (default 0.1)")
    p.add_argument("--head-lr-mult", type=float, help="lr multiplier of the new layer (default 1)")
    p.add_argument("--num-pos", type=int, help="object regions per batch (default 32)")
    p.add_argument("--num-neg", type=int, help="background regions per batch (default 96)")
    p.add_argument("--input-size", type=int, help="warp size in pixels (default 227)")
    p.add_argument(
        "--context-pad",
        type=int,
        help="pixels of context around each warped region (default 0; R-CNN used 16)",
    )
    p.add_argument(
        "--norm",
        choices=["imagenet", "half"],
        help="input normalization: the "
        "backbone's ImageNet mean/std (default) or the recipe's 0.5/0.5",
    )
    p.add_argument(
        "--val-max",
        type=int,
        help="validate on a fixed subset of this many regions (default 0 = all)",
    )
    p.add_argument(
        "--val-batch",
        type=int,
        help="regions per validation batch (default 0: 1024 on CUDA, 256 elsewhere)",
    )
    p.add_argument(
        "--best-metric",
        choices=BEST_METRICS,
        help="what best.pt maximises (default val_balanced_acc; val_loss is minimised)",
    )
    p.add_argument("--workers", type=int, help="warping threads or worker processes (default 2)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present)")
    p.add_argument(
        "--pipeline",
        choices=["auto", "device", "threads", "loader"],
        help="where regions are warped: device (all images on the GPU, batched roi_align; "
        "default on CUDA), threads (OpenCV threads into one batch buffer; default on CPU) or "
        "loader (DataLoader worker processes)",
    )
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision: bfloat16 autocast (float16 with loss scaling on GPUs without "
        "bfloat16); default on where the device computes bfloat16 natively (CUDA GPUs, CPUs "
        "with AVX512-BF16 or AMX), off elsewhere",
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
        "1.24x the training steps on an H200 after 10 to 30 s of compiling",
    )
    p.add_argument(
        "--lr-scale",
        choices=["none", "linear"],
        help="under torchrun, linear multiplies --lr by the number of processes (default none)",
    )
    p.add_argument("--seed", type=int, help="seed of sampling, flips and dropout (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _cmd_train(args) -> None:
    from rcnn.training.config import TrainConfig, train_config
    from rcnn.training.train import resume_config, run_train

    # Every TrainConfig field with a flag of the same name; unset flags are None.
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("data", "out")]
    flags = {name: getattr(args, name) for name in names if hasattr(args, name)}
    flags.pop("progress", None)
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


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        formatter_class=_Formatter,
        help="metrics of a checkpoint on a region set",
        description="Evaluate a checkpoint (a run folder means its best.pt) on every region of a "
        "split: loss, accuracy, balanced accuracy, the accuracy the recipe's 32:96 batch mix "
        "would show, per-class precision/recall, average precision and the confusion matrix. "
        "Writes metrics.json, pr.png (precision-recall) and examples.png.",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder or .pt file")
    p.add_argument("--data", required=True, help="`rcnn prepare` output folder or a region store")
    p.add_argument("--split", default="val", help="split inside --data")
    p.add_argument("--out", help="output folder (default: RUN/eval-SPLIT)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when present)")
    p.add_argument("--workers", type=int, default=2, help="warping threads or worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_evaluate(args) -> None:
    from rcnn.evaluation.evaluate import run_evaluate

    metrics = run_evaluate(
        args.checkpoint,
        args.data,
        args.split,
        args.out,
        args.device,
        args.workers,
        not args.no_progress,
    )
    print(metrics["report"])
    print(f"metrics, pr.png and examples.png in {metrics['out']}")


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        formatter_class=_Formatter,
        help="overlay the curves of several runs",
        description="One figure overlaying the validation loss, a metric and the training loss "
        "of several runs, and a table of their best epochs; e.g. the recipe against its three "
        "remedies (presets seed, lr-1e-4, weight-decay, adam).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders of `rcnn train`")
    p.add_argument("--out", default="compare.png", help="figure to write")
    p.add_argument(
        "--metric",
        default="val_balanced_acc",
        choices=["val_balanced_acc", "val_acc", "val_recipe_acc", "val_object_ap"],
        help="metric that picks each run's best epoch",
    )


def _cmd_compare(args) -> None:
    from rcnn.evaluation.evaluate import run_compare

    print(run_compare(args.runs, args.out, args.metric))
    print(f"figure: {args.out}")


def _add_detector_flags(p, thresh_help: str, max_per_image: int, max_per_class: int) -> None:
    p.add_argument(
        "--classes",
        nargs="+",
        help="class names in training order; needed only for a plain state dict (model.pth)",
    )
    p.add_argument(
        "--scorer",
        choices=["softmax", "svm"],
        default="softmax",
        help="score proposals by the network's softmax or by the SVMs on its fc7 features",
    )
    p.add_argument("--svm", metavar="SVMDIR", help="`rcnn train-svm` output (default: RUN/svm)")
    p.add_argument(
        "--bbox-reg",
        metavar="BBOXDIR",
        help="move each scored box with these regressors (`rcnn train-bbox`) before NMS",
    )
    p.add_argument("--score-thresh", type=float, help=thresh_help)
    p.add_argument(
        "--nms", type=float, default=0.3, help="IoU above which a lower-scored box is suppressed"
    )
    p.add_argument(
        "--max-per-image", type=int, default=max_per_image, help="best boxes kept (0 = all)"
    )
    p.add_argument(
        "--max-per-class",
        type=int,
        default=max_per_class,
        help="best boxes kept per image and class (0 = all)",
    )
    p.add_argument(
        "--mode",
        choices=["fast", "quality"],
        default="fast",
        help="Selective Search strategy at test time",
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=1000,
        help="images whose longer side is larger are shrunk to this for Selective Search "
        "(0 = never)",
    )
    p.add_argument(
        "--batch", type=int, default=0, help="regions a forward pass (0: 1024 on CUDA, 256 else)"
    )
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        help="bfloat16 autocast (default: on where the device computes bfloat16 natively: CUDA "
        "GPUs, CPUs with AVX512-BF16 or AMX)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda when present)")
    p.add_argument(
        "--workers", type=int, default=0, help="Selective Search processes (0 = one per core)"
    )
    p.add_argument("--threads", type=int, default=2, help="warping threads on the CPU")
    p.add_argument("--cache-dir", help="proposal cache (default: $RCNN_CACHE_DIR or ~/.cache/rcnn)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _detector_config(args, keep_all: bool = False):
    from rcnn.detection.config import DetectorConfig

    return DetectorConfig(
        scorer=args.scorer,
        svm=args.svm,
        bbox_reg=args.bbox_reg,
        score_thresh=args.score_thresh,
        keep_all=keep_all,
        nms=args.nms,
        max_per_image=args.max_per_image,
        max_per_class=args.max_per_class,
        mode=args.mode,
        max_side=args.max_side,
        batch=args.batch,
        amp=args.amp,
        device=args.device,
        workers=args.workers,
        threads=args.threads,
        cache_dir=args.cache_dir,
    )


def _add_detect(sub) -> None:
    p = sub.add_parser(
        "detect",
        formatter_class=_Formatter,
        help="detect objects in images with a fine-tuned run",
        description="The R-CNN detector: Selective Search proposals for each image (cached), "
        "every proposal warped and scored by the fine-tuned network in large batches, then per "
        "class a score threshold and non-maximum suppression. Writes OUT/NAME.jpg with the "
        "boxes drawn (a colour per class, the score on each box) and OUT/detections.jsonl "
        "(per image: its path, size and detections, boxes as x1 y1 x2 y2 with x2, y2 "
        "exclusive). Unreadable images are skipped with a warning.",
    )
    p.add_argument("model", metavar="MODEL", help="run folder, best.pt, or model.pth (+ --classes)")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
    p.add_argument("--out", required=True, help="folder for the pictures and detections.jsonl")
    _add_detector_flags(
        p,
        "keep boxes scoring at least this for their class (default: 0.6 for softmax scores, "
        "0 for SVM scores)",
        max_per_image=100,
        max_per_class=0,
    )


def _cmd_detect(args) -> None:
    from rcnn.detection.detect import run_detect

    summary = run_detect(
        args.model,
        args.images,
        args.out,
        _detector_config(args),
        args.classes,
        args.overwrite,
        not args.no_progress,
    )
    print(
        f"{summary['detections']} detections in {summary['images']} images "
        f"({len(summary['skipped'])} skipped); pictures and detections.jsonl in {summary['out']}"
    )


def _add_test(sub) -> None:
    p = sub.add_parser(
        "test",
        formatter_class=_Formatter,
        help="detection AP on a VOC split (the devkit's rules)",
        description="Run the detector on every image of a VOC split (all of {split}.txt), write "
        "the devkit's result files OUT/comp4_det_{split}_{class}.txt (image_id score xmin "
        "ymin xmax ymax, 1-based inclusive pixels) and score them by the devkit's rules: "
        "per class and mean, VOC2007 11-point AP (what the R-CNN paper reports) and "
        "area-under-curve AP (VOC2010+), the final recall, and the proposals' recall at "
        "IoU 0.5. Writes metrics.json and pr.png. Every box counts (no score threshold), at "
        "most --max-per-class per image and class. A killed run continues where it stopped. "
        "With --dets DIR, scores existing result files instead (no network needed).",
    )
    p.add_argument(
        "model", nargs="?", metavar="MODEL", help="run folder, best.pt, or model.pth (+ --classes)"
    )
    p.add_argument("--voc-root", required=True, help="VOC folder with the split's annotations")
    p.add_argument("--split", default="test", help="ImageSets/Main/{split}.txt")
    p.add_argument("--out", help="output folder (default with --dets: the --dets folder)")
    p.add_argument("--dets", help="score the result files in this folder instead of detecting")
    p.add_argument(
        "--competition",
        metavar="PREFIX",
        help="with --dets: read {PREFIX}_det_{split}_{class}.txt (e.g. comp4) when the folder "
        "holds several competitions' files",
    )
    _add_detector_flags(
        p,
        "keep only boxes scoring at least this (default: every box counts, as AP needs)",
        max_per_image=0,
        max_per_class=100,
    )


def _test_config(args):
    from rcnn.detection.voc_test import VOCTestConfig

    return VOCTestConfig(
        args.model,
        args.voc_root,
        args.out,
        args.split,
        args.classes,
        _detector_config(args, keep_all=args.score_thresh is None),
        args.overwrite,
        not args.no_progress,
    )


def _cmd_test(args) -> None:
    from rcnn.detection.voc_test import evaluate_result_files, run_test

    if args.dets:
        if args.model:
            raise ConfigError("give MODEL or --dets DIR, not both")
        metrics = evaluate_result_files(
            args.dets, args.voc_root, args.split, args.classes, args.out, args.competition
        )
    else:
        if not args.model or not args.out:
            raise ConfigError("MODEL and --out are required (or --dets DIR)")
        metrics = run_test(_test_config(args))
        if not metrics:  # a torchrun process other than rank 0
            return
    print(metrics["report"])
    print(f"metrics.json and pr.png in {metrics['out']}")


def _add_ablate(sub) -> None:
    p = sub.add_parser(
        "ablate",
        formatter_class=_Formatter,
        help="the R-CNN paper's Table 2: softmax vs SVM vs SVM + box regression",
        description="Run `rcnn test` three ways from one forward pass per image: the "
        "fine-tuned network's softmax, the per-class SVMs on its fc7 features (`rcnn "
        "train-svm`), and the SVMs with box regression (`rcnn train-bbox`). Writes each "
        "variant's result files and metrics to OUT/{softmax,svm,svm-bbox}/ and the table to "
        "OUT/ablation.md, ablation.json and ablation.png (per-class AP side by side).",
    )
    p.add_argument("model", metavar="MODEL", help="run folder or best.pt")
    p.add_argument("--voc-root", required=True, help="VOC folder with the split's annotations")
    p.add_argument("--split", default="test", help="ImageSets/Main/{split}.txt")
    p.add_argument("--out", required=True, help="output folder")
    _add_detector_flags(
        p,
        "keep only boxes scoring at least this (default: every box counts, as AP needs)",
        max_per_image=0,
        max_per_class=100,
    )


def _cmd_ablate(args) -> None:
    from rcnn.detection.ablate import run_ablation
    from rcnn.modeling.heads import run_folder

    if args.bbox_reg is None:
        args.bbox_reg = str(run_folder(args.model) / "bbox")
    result = run_ablation(_test_config(args))
    if result:
        print(result["table"])
        print(f"per-variant results in {result['out']}/{{softmax,svm,svm-bbox}}, table and "
              f"figure in {result['out']}/ablation.{{md,json,png}}")  # fmt: skip


def _add_head_flags(p, default_out: str) -> None:
    p.add_argument("model", metavar="MODEL", help="run folder or best.pt of `rcnn train`")
    p.add_argument(
        "--data",
        required=True,
        help="`rcnn prepare` output folder; prepare it with --preset paper, which keeps every "
        "proposal and adds the ground-truth boxes",
    )
    p.add_argument("--out", help=f"output folder (default: RUN/{default_out})")
    p.add_argument("--features", help="feature store (default: RUN/features; computed if missing)")
    p.add_argument("--split", default="train", help="split to train on")
    p.add_argument("--device", default="auto", help="for computing missing features")
    p.add_argument("--batch", type=int, default=0, help="regions a forward pass (0: automatic)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bfloat16 autocast")
    p.add_argument("--threads", type=int, default=2, help="warping threads on the CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _head_config(args):
    from rcnn.modeling.heads import HeadConfig

    return HeadConfig(
        args.model, args.data, args.out, args.features, args.split, args.device, args.batch,
        args.amp, args.threads, not args.no_progress,
    )  # fmt: skip


def _add_features(sub) -> None:
    p = sub.add_parser(
        "features",
        formatter_class=_Formatter,
        help="fc7 (and pool5) features of every region, for the SVM and box stages",
        description="Warp every region of the chosen splits (no flip) and push it through the "
        "fine-tuned network in eval mode, keeping fc7 (the input of the last layer: 4,096 "
        "values for AlexNet, after its ReLU) and with --pool5 also pool5 (the input of the "
        "first fully connected layer: 9,216 for AlexNet). Other backbones: the inputs of their "
        "last and first nn.Linear. Stored as float16 chunks of 4,096 regions, written "
        "atomically: a killed run resumes with the missing chunks. Prints the bytes per region "
        "before it starts.",
    )
    p.add_argument("model", metavar="MODEL", help="run folder or best.pt of `rcnn train`")
    p.add_argument("--data", required=True, help="`rcnn prepare` output folder")
    p.add_argument("--out", help="feature store (default: RUN/features)")
    p.add_argument("--split", nargs="+", default=["train"], dest="splits", help="splits")
    p.add_argument("--pool5", action="store_true", help="also pool5 (for box regression)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda when present)")
    p.add_argument("--batch", type=int, default=0, help="regions a forward pass (0: automatic)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bfloat16 autocast")
    p.add_argument("--threads", type=int, default=2, help="warping threads on the CPU")
    p.add_argument(
        "--overwrite", action="store_true", help="replace features of another model in --out"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_features(args) -> None:
    from pathlib import Path

    from rcnn.modeling.extract import FeaturesConfig, run_features
    from rcnn.modeling.heads import run_folder

    out = args.out or str(run_folder(args.model) / "features")
    layers = ["fc7", "pool5"] if args.pool5 else ["fc7"]
    summary = run_features(
        FeaturesConfig(
            args.model, args.data, out, args.splits, layers, args.batch, args.amp, args.device,
            args.threads, overwrite=args.overwrite, progress=not args.no_progress,
        )
    )  # fmt: skip
    for split, s in summary["splits"].items():
        print(
            f"{split}: {s['regions']} regions, {summary['bytes_per_region']} bytes a region "
            f"({' + '.join(f'{n} {d}' for n, d in summary['layers'].items())} float16), "
            f"{s['chunks_computed']} chunk(s) computed"
        )
    print(f"features in {Path(out)}")


def _add_train_svm(sub) -> None:
    p = sub.add_parser(
        "train-svm",
        formatter_class=_Formatter,
        help="per-class linear SVMs on fc7 features, with hard-negative mining",
        description="R-CNN's SVMs: per class, the non-difficult ground-truth boxes are the "
        "positives and proposals with IoU < 0.3 with every box of the class the negatives. "
        "Starting from the positives and a first sample of negatives, each round scores every "
        "negative, adds those above -1 (hard) to the cache, drops cached ones below -1.2 "
        "(easy) and retrains, until a round adds none or --rounds is reached. liblinear "
        "(scikit-learn's LinearSVC, hinge loss) with C 0.001, positive weight 2, bias feature "
        "10, features scaled to a mean L2 norm of 20. Writes svm.npz, svm.json, svm_log.csv.",
    )
    _add_head_flags(p, "svm")
    p.add_argument("--C", type=float, default=0.001, dest="C", help="SVM regularization")
    p.add_argument("--pos-weight", type=float, default=2.0, help="loss weight of positives")
    p.add_argument("--rounds", type=int, default=10, help="retraining rounds at most")
    p.add_argument(
        "--first-negatives", type=int, default=5000, help="negatives of the first round, a class"
    )


def _cmd_train_svm(args) -> None:
    from rcnn.modeling.heads import run_train_svm
    from rcnn.modeling.svm import SVMConfig

    svm = SVMConfig(C=args.C, pos_weight=args.pos_weight, rounds=args.rounds,
                    first_negatives=args.first_negatives)  # fmt: skip
    result = run_train_svm(_head_config(args), svm)
    print(f"{'class':<14}{'round':>6}{'positives':>11}{'cache':>8}{'hard+':>7}{'easy-':>7}"
          f"{'objective':>12}")  # fmt: skip
    for row in result["log"]:
        print(
            f"{row['class']:<14}{row['round']:>6}{row['positives']:>11}"
            f"{row['negatives_in_cache']:>8}{row.get('hard_added', ''):>7}"
            f"{row.get('easy_dropped', ''):>7}{row['objective']:>12.5f}"
        )
    print(f"SVMs in {result['out']} ({result['seconds']} s)")


def _add_train_bbox(sub) -> None:
    p = sub.add_parser(
        "train-bbox",
        formatter_class=_Formatter,
        help="per-class bounding-box regression on pool5 features",
        description="R-CNN's box regressors: per class, ridge regression (lambda 1000) from "
        "the pool5 features of regions with IoU >= 0.6 with a box of the class (scaled to a "
        "mean L2 norm of 20) to the targets tx = (Gx - Px) / Pw, ty = (Gy - Py) / Ph, tw = "
        "log(Gw / Pw), th = log(Gh / Ph). Writes bbox.npz, bbox.json, bbox_log.csv.",
    )
    _add_head_flags(p, "bbox")
    p.add_argument("--ridge", type=float, default=1000.0, help="ridge penalty lambda")
    p.add_argument("--min-iou", type=float, default=0.6, help="IoU of a training region")


def _cmd_train_bbox(args) -> None:
    from rcnn.modeling.bbox_regression import BBoxConfig
    from rcnn.modeling.heads import run_train_bbox

    result = run_train_bbox(_head_config(args), BBoxConfig(args.ridge, args.min_iou))
    for row in result["log"]:
        print(
            f"{row['class']}: {row['examples']} regions, target rms {row['target_rms']:.4f}, "
            f"residual rms {row['residual_rms']:.4f}"
        )
    print(f"box regressors in {result['out']} ({result['seconds']} s)")


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="the whole pipeline, offline, on synthetic data",
        description="Synthesize a VOC-format car dataset (train, val and test splits), prepare "
        "regions (fast Selective Search), fine-tune AlexNet (ImageNet weights when they are in "
        "the torch cache, else random initialisation), evaluate the regions, then detect on "
        "the test split and score it by the VOC devkit's rules, and draw predictions and "
        "detections. A few minutes on a 2-core CPU; a re-run replaces the demo's run.",
    )
    p.add_argument("--out", default="rcnn-demo", help="folder for everything the demo writes")
    p.add_argument("--images", type=int, default=90, help="synthetic images (a third each split)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs")
    p.add_argument("--input-size", type=int, default=112, help="warp size (the recipe uses 227)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and training")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _cmd_demo(args) -> None:
    from rcnn.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            out=args.out,
            images=args.images,
            epochs=args.epochs,
            input_size=args.input_size,
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
        )
    )


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        formatter_class=_Formatter,
        help="regions/s of the input pipeline or of training steps",
        description="Measure regions per second of the training input pipeline (`loader`: "
        "warped, flipped, normalized batches on the device) or of full training steps "
        "(`train`: input, forward, backward, optimizer step) on a prepared region set, plus "
        "peak memory. "
        "benchmarks/bench_pipeline.py compares both with the naive pipeline in one run.",
    )
    p.add_argument("what", choices=["loader", "train"], help="what to time")
    p.add_argument("--data", required=True, help="`rcnn prepare` output folder")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when present)")
    p.add_argument(
        "--pipeline",
        choices=["auto", "device", "threads", "loader"],
        default="auto",
        help="device: batched roi_align on the device; threads: OpenCV threads; "
        "loader: DataLoader worker processes",
    )
    p.add_argument("--batches", type=int, default=20, help="timed batches (after warm-up)")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="warping threads (threads path) or worker processes (loader path)",
    )
    p.add_argument("--input-size", type=int, default=227, help="warp size")
    p.add_argument("--backbone", default="alexnet", help="torchvision classifier (train)")
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        help="bfloat16 autocast (train; default as in `rcnn train`: on where the device "
        "computes bfloat16 natively)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last layout (train; default on, as in `rcnn train`)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _cmd_bench(args) -> None:
    import json

    from rcnn.bench import bench_loader, bench_train
    from rcnn.training.config import TrainConfig

    cfg = TrainConfig(
        data=args.data,
        weights="none",
        backbone=args.backbone,
        workers=args.workers,
        device=args.device,
        pipeline=args.pipeline,
        input_size=args.input_size,
        amp=args.amp,
        channels_last=args.channels_last,
        progress=False,
    )
    if args.what == "loader":
        result = bench_loader(cfg, args.batches)
    else:
        result = bench_train(cfg, args.batches)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:<16}{value}")


COMMANDS = {
    "synth": (_add_synth, _cmd_synth),
    "prepare": (_add_prepare, _cmd_prepare),
    "train": (_add_train, _cmd_train),
    "evaluate": (_add_evaluate, _cmd_evaluate),
    "compare": (_add_compare, _cmd_compare),
    "detect": (_add_detect, _cmd_detect),
    "test": (_add_test, _cmd_test),
    "features": (_add_features, _cmd_features),
    "train-svm": (_add_train_svm, _cmd_train_svm),
    "train-bbox": (_add_train_bbox, _cmd_train_bbox),
    "ablate": (_add_ablate, _cmd_ablate),
    "demo": (_add_demo, _cmd_demo),
    "bench": (_add_bench, _cmd_bench),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcnn",
        formatter_class=_Formatter,
        description="R-CNN on PASCAL VOC-format data.\n\n"
        "Pipeline: rcnn synth (optional) -> rcnn prepare -> rcnn train -> rcnn evaluate\n"
        "          -> rcnn detect (images) / rcnn test (VOC detection AP)\n"
        "          -> rcnn features -> rcnn train-svm / train-bbox -> rcnn ablate.\n"
        "`rcnn demo` runs it all on synthetic data.\n"
        "Run `rcnn COMMAND --help` for each command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"rcnn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        COMMANDS[args.command][1](args)
    except (RcnnError, OSError) as err:  # errors a user can cause; bugs keep tracebacks
        if args.verbose:
            traceback.print_exc()
        print(f"rcnn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rcnn {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
