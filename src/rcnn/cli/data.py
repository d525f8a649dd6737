"""``rcnn synth``, ``rcnn prepare`` and ``rcnn proposals``."""

from __future__ import annotations

from pathlib import Path

from rcnn.cli.common import (
    add_cache_dir,
    add_dataset_flags,
    add_max_side,
    add_progress,
    add_proposals,
    add_search_workers,
    default,
    parser,
)
from rcnn.data.config import MODES, PrepareConfig, ProposalConfig
from rcnn.data.labels import PRESETS, label_config
from rcnn.errors import ConfigError


def add_synth(sub) -> None:
    p = parser(
        sub,
        "synth",
        "write a synthetic VOC-format dataset",
        "Write a synthetic PASCAL VOC2007-layout dataset of scenes with objects among "
        "distractor shapes: JPEGImages/, Annotations/, ImageSets/Main/{split}.txt and "
        "{class}_{split}.txt. Each class is drawn by its shape (car: low body, cabin, wheels; "
        "bus: a tall box with a row of windows; bicycle: two rings and bars; person: head, "
        "torso, legs; the other VOC names: families of vehicles, animals, furniture and "
        "objects). The same seed gives the same bytes.",
    )
    p.add_argument("out", help="folder to create (its Annotations/ must not exist yet)")
    p.add_argument("--images", type=int, default=200, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--size", default="320x240", help="image size WIDTHxHEIGHT, each side from 64 to 4096"
    )
    p.add_argument(
        "--classes",
        nargs="+",
        default=["car"],
        help="object classes: VOC class names (car, bus, bicycle and person differ most), or "
        "voc for all 20",
    )
    p.add_argument("--val-fraction", type=float, default=0.5, help="share of images in val")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="share of images in a test split (ImageSets/Main/test.txt; 0 = none)",
    )
    p.add_argument(
        "--coco",
        action="store_true",
        help="also write the annotations as COCO instances files, coco/instances_{split}.json, "
        "whose images are in JPEGImages/ (read them with --coco OUT/coco/instances_{split}.json "
        "--images OUT/JPEGImages)",
    )


def cmd_synth(args) -> None:
    from rcnn.data.synth import make_synthetic_voc

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError as err:
        raise ConfigError(f"--size must look like 320x240, got {args.size!r}") from err
    summary = make_synthetic_voc(
        args.out,
        args.images,
        args.seed,
        (width, height),
        args.val_fraction,
        args.test_fraction,
        classes=args.classes,
        coco=args.coco,
    )
    test = f", {summary['test']} test" if summary["test"] else ""
    counts = ", ".join(f"{n} {c}" for c, n in summary["per_class"].items())
    print(
        f"wrote {summary['images']} images ({summary['train']} train, {summary['val']} val"
        f"{test}; objects: {counts}) to {summary['root']}"
    )


# -------------------------------------------------------------------------------- prepare
def add_prepare(sub) -> None:
    p = parser(
        sub,
        "prepare",
        "Selective Search + labelling: VOC or COCO images -> region stores",
        "Run Selective Search on every chosen image of each split (in parallel, "
        "cached by image content), label each proposal by its IoU with the ground truth, and "
        "write OUT/{split}/ region stores plus OUT/summary.json.\n\nPresets:\n"
        "  seed   the images that show a chosen class; positive IoU >= 0.5; negative\n"
        "         0 < IoU < 0.5 and area > 1/5 of the largest ground-truth box; difficult\n"
        "         objects left out (the recipe's rule)\n"
        "  paper  Girshick et al. 2014: every image of the split (those without a chosen\n"
        "         object are background only: all their regions negatives, where the SVMs\n"
        "         mine hard negatives); ground truth added as positives, every proposal with\n"
        "         IoU < 0.5 negative, difficult objects kept\n"
        "Threshold flags override the preset.",
    )
    p.add_argument("--out", required=True, help="output folder for the region stores")
    add_dataset_flags(
        p, default(PrepareConfig, "splits"), "splits to prepare: NAME, or STORE=NAME", splits=True
    )
    p.add_argument(
        "--classes",
        nargs="+",
        default=default(PrepareConfig, "classes"),
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
        choices=MODES,
        default=default(ProposalConfig, "mode"),
        help="Selective Search strategy (quality: more, slower proposals)",
    )
    add_max_side(p)
    add_proposals(p)
    add_search_workers(p)
    add_cache_dir(p)
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at a bad image instead of skipping it with a warning",
    )
    add_progress(p)


def cmd_prepare(args) -> None:
    from rcnn.data.prepare import run_prepare

    labels = label_config(
        args.preset,
        pos_iou=args.pos_iou,
        neg_iou_min=args.neg_iou_min,
        neg_iou_max=args.neg_iou_max,
        neg_min_area_frac=args.neg_min_area_frac,
    )
    cfg = PrepareConfig(
        voc_root=args.voc_root,
        coco=args.coco,
        images=args.images,
        out=args.out,
        splits=args.splits,
        classes=args.classes,
        labels=labels,
        proposals=ProposalConfig(
            mode=args.mode,
            max_side=args.max_side,
            file=args.proposals,
            max_proposals=args.max_proposals,
        ),
        workers=args.workers,
        cache_dir=args.cache_dir,
        strict=args.strict,
        progress=not args.no_progress,
    )
    summary = run_prepare(cfg)
    if summary is not None:  # None on torchrun's other processes: rank 0 reports
        print(format_prepare_summary(summary, args.out))


def format_prepare_summary(summary: dict, out: str) -> str:
    lines = [
        f"{'split':<8}{'images':>8}{'objects':>9}{'bg-only':>9}{'skipped':>9}{'proposals':>11}"
        f"{'positives':>11}{'negatives':>11}{'seconds':>9}"
    ]
    for split, s in summary["splits"].items():
        lines.append(
            f"{split:<8}{s['images']:>8}{s['with_objects']:>9}{s['background_only']:>9}"
            f"{len(s['skipped']):>9}{s['proposals']:>11}{s['positives']:>11}"
            f"{s['negatives']:>11}{s['seconds']:>9.1f}"
        )
    lines.append("(objects: images with an object of a chosen class; bg-only: without one)")
    lines.append(
        f"region stores in {out}/{{{','.join(summary['splits'])}}}, summary in {out}/summary.json"
    )
    return "\n".join(lines)


def add_proposals_export(sub) -> None:
    p = parser(
        sub,
        "proposals",
        "write a split's Selective Search proposals as a .mat file (R-CNN's layout)",
        "Write the Selective Search proposals of every image of a split (read from the "
        "proposal cache, or searched now, in parallel) to a .mat file of R-CNN's and Fast "
        "R-CNN's layout: 'boxes', one [y1 x1 y2 x2] 1-based array an image, and 'images', "
        "their ids. Any machine then reads them with --proposals FILE (rcnn prepare, test, "
        "ablate, detect) instead of searching again.",
    )
    add_dataset_flags(p, "trainval", "the split")
    p.add_argument("--out", required=True, metavar="FILE.mat", help="the file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument(
        "--mode",
        choices=MODES,
        default=default(ProposalConfig, "mode"),
        help="Selective Search strategy",
    )
    add_max_side(p)
    add_search_workers(p)
    add_cache_dir(p)
    add_progress(p)


def cmd_proposals_export(args) -> None:
    from rcnn.data.annotations import check_split_name
    from rcnn.data.proposal_files import export_proposals
    from rcnn.data.proposals import default_cache_dir
    from rcnn.data.readers import open_dataset
    from rcnn.files import output_dir

    check_split_name(args.split)
    out = Path(args.out)
    if out.suffix.lower() != ".mat":
        raise ConfigError(f"--out {args.out}: the proposals are written as a .mat file")
    if out.is_dir():
        raise ConfigError(f"--out {args.out} is a folder; name the .mat file to write")
    if (out.exists() or out.is_symlink()) and not args.overwrite:
        raise ConfigError(f"--out {args.out} exists; pass --overwrite to replace it")
    output_dir(out.parent)
    dataset = open_dataset(args.voc_root, args.coco, args.images)
    config = ProposalConfig(mode=args.mode, max_side=args.max_side)
    cache = args.cache_dir if args.cache_dir is not None else default_cache_dir()
    summary = export_proposals(dataset, args.split, config, cache, args.out,
                               args.workers, not args.no_progress)  # fmt: skip
    print(f"{summary['boxes']} proposals of {summary['images']} images ({summary['from_cache']} "
          f"from the cache, {summary['skipped']} skipped) in {summary['out']}")  # fmt: skip
