"""``rcnn pipeline``: every stage on the user's dataset, in one command."""

from __future__ import annotations

import argparse

from rcnn.cli.common import (
    add_cache_dir,
    add_inference_flags,
    add_max_proposals,
    add_max_side,
    add_progress,
    add_search_workers,
    default,
    inference,
    parser,
)
from rcnn.cli.train import add_training_flags, training_flags
from rcnn.data.config import MODES, ProposalConfig
from rcnn.pipeline.config import PipelineConfig
from rcnn.training.config import PRESETS


def add_pipeline(sub) -> None:
    p = parser(
        sub,
        "pipeline",
        "all of R-CNN on a VOC or COCO dataset, with a report",
        "Run every stage of R-CNN on your dataset with the paper's settings by default: "
        "regions for fine-tuning and for the SVMs (rcnn prepare), fine-tuning (rcnn train), "
        "the best checkpoint on every val region (rcnn evaluate), SVMs on pool5, fc6 and fc7 "
        "before and after fine-tuning, box regression and detection on the test split by every "
        "scorer, with VOC and COCO metrics and the top false positives (rcnn ablate: the "
        "paper's Table 2). Writes OUT/report.md first of all: per-class AP, the ablation "
        "beside the paper's VOC2007 numbers, and each stage's time and peak memory.\n\n"
        "Resumable: a re-run after a kill goes on where it stopped; with nothing changed it "
        "only rewrites the report; a changed flag or dataset file redoes the stages it "
        "affects and those after them. The finished outputs a redo replaces are kept in "
        "OUT/.previous/ and come back when the old settings are run again. Under torchrun "
        "every stage runs across the processes.\n\n"
        "Example: rcnn pipeline --voc-root VOCdevkit/VOC2007 --classes all --out voc07",
    )
    data = p.add_argument_group("dataset (a VOC folder, or a COCO file and its images)")
    data.add_argument(
        "--voc-root",
        help="folder holding Annotations/, JPEGImages/, ImageSets/Main/ (e.g. VOCdevkit/VOC2007)",
    )
    data.add_argument(
        "--coco",
        metavar="FILE",
        help="COCO instances JSON, {split} replaced by each split's name (instead of --voc-root)",
    )
    data.add_argument("--images", metavar="DIR", help="with --coco: its images ({split} too)")
    data.add_argument(
        "--classes",
        nargs="+",
        required=True,
        help="object classes (labels 1..K in this order); 'all' = the 20 VOC classes",
    )
    for name, text in (
        ("train", "fine-tuning's training split"),
        ("val", "fine-tuning's validation split"),
        ("test", "the split detected and scored"),
    ):
        data.add_argument(
            f"--{name}-split", default=default(PipelineConfig, f"{name}_split"), help=text
        )
    data.add_argument(
        "--svm-split",
        help="the SVMs' and box regressors' split (default: trainval where the dataset has "
        "it, as in the paper, else the training split)",
    )
    p.add_argument("--out", required=True, help="the pipeline's folder (re-run it to resume)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=default(PipelineConfig, "preset"),
        help="fine-tuning's hyper-parameters (see `rcnn train --help`); with paper the "
        "fine-tuning regions follow the paper's rules too (ground truth added, every other "
        "proposal below IoU 0.5 is background), with the others the recipe's",
    )
    train = p.add_argument_group("fine-tuning (flags override the preset)")
    add_training_flags(train, skip=("--workers",))
    search = p.add_argument_group("proposals and detection")
    search.add_argument(
        "--mode",
        choices=MODES,
        default="fast",
        help="Selective Search strategy, for training and test images",
    )
    add_max_side(search)
    search.add_argument(
        "--proposals",
        nargs="+",
        default=[],
        metavar="FILE",
        help="precomputed proposals instead of Selective Search: .mat files of R-CNN's and "
        "Fast R-CNN's layout (see `rcnn prepare --help`); each stage reads the first file "
        "holding every image of its splits (fine-tuning: train and val in one file), e.g. "
        "--proposals voc_2007_trainval.mat voc_2007_test.mat",
    )
    add_max_proposals(search)
    search.add_argument(
        "--nms",
        type=float,
        default=default(PipelineConfig, "nms"),
        help="IoU above which a lower-scored box of a class is suppressed",
    )
    search.add_argument(
        "--analyze",
        action=argparse.BooleanOptionalAction,
        default=default(PipelineConfig, "analyze"),
        help="the paper's analysis of each class's top false positives",
    )
    machine = p.add_argument_group("this machine")
    add_inference_flags(machine)
    add_search_workers(machine)
    add_cache_dir(machine)
    add_progress(p)


def cmd_pipeline(args) -> None:
    from rcnn.pipeline.run import run_pipeline

    flags = {k: v for k, v in training_flags(args).items() if v is not None}
    for name in ("workers", "device", "amp"):  # the machine's flags, shared with detection
        flags.pop(name, None)
    cfg = PipelineConfig(
        out=args.out,
        voc_root=args.voc_root,
        coco=args.coco,
        images=args.images,
        classes=args.classes,
        preset=args.preset,
        train=flags,
        train_split=args.train_split,
        val_split=args.val_split,
        test_split=args.test_split,
        svm_split=args.svm_split,
        proposals=ProposalConfig(args.mode, args.max_side, max_proposals=args.max_proposals),
        proposal_files=args.proposals,
        nms=args.nms,
        inference=inference(args),
        workers=args.workers,
        cache_dir=args.cache_dir,
        analyze=args.analyze,
        progress=not args.no_progress,
    )
    found = run_pipeline(cfg)
    if found is not None:
        ran = ", ".join(found["ran"]) or "none (all up to date)"
        print(f"stages run: {ran}\nreport: {found['report']}")
