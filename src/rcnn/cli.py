"""The ``rcnn`` command line: one subcommand per pipeline stage.

Each ``_cmd_<name>`` turns parsed flags into the stage's config object and calls its
``run_<name>``; the work lives in the modules, where it can be called and tested alone.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rcnn import __version__

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


def _cmd_synth(args) -> None:
    from rcnn.synth import make_synthetic_voc

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError as err:
        raise ValueError(f"--size must look like 320x240, got {args.size!r}") from err
    summary = make_synthetic_voc(
        args.out, args.images, args.seed, (width, height), args.val_fraction
    )
    print(
        f"wrote {summary['images']} images ({summary['train']} train, {summary['val']} val, "
        f"{summary['cars']} cars) to {summary['root']}"
    )


def _add_prepare(sub) -> None:
    from rcnn.labels import PRESETS

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
        default=0,
        help="shrink images so the longer side is at most this before searching "
        "(0 = full size); boxes are mapped back to full size",
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
    from rcnn.labels import label_config
    from rcnn.prepare import PrepareConfig, run_prepare
    from rcnn.proposals import ProposalConfig

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


COMMANDS = {
    "synth": (_add_synth, _cmd_synth),
    "prepare": (_add_prepare, _cmd_prepare),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcnn",
        formatter_class=_Formatter,
        description="R-CNN fine-tuning on PASCAL VOC-format data.\n\n"
        "Pipeline: rcnn synth (optional) -> rcnn prepare -> rcnn train -> rcnn evaluate.\n"
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
    except (ValueError, OSError) as err:  # errors a user can cause; bugs keep tracebacks
        print(f"rcnn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rcnn {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
