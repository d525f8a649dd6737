"""``rcnn detect``, ``rcnn test`` and ``rcnn ablate``."""

from __future__ import annotations

from pathlib import Path

from rcnn.cli.common import (
    add_cache_dir,
    add_dataset_flags,
    add_inference_flags,
    add_max_side,
    add_model,
    add_progress,
    add_proposals,
    add_search_workers,
    default,
    inference,
    parser,
)
from rcnn.detection.config import SCORERS, DetectorConfig, eval_detector_config
from rcnn.errors import ConfigError


def add_scoring_flags(p, thresh_help: str, caps) -> None:
    """How proposals become detections (scorer, heads, threshold, NMS, caps): the flags of
    ``rcnn detect``, ``test``, ``ablate`` and ``export``; ``caps`` gives the defaults of
    --max-per-image/-class (a DetectorConfig)."""
    p.add_argument(
        "--scorer",
        choices=SCORERS,
        default=default(DetectorConfig, "scorer"),
        help="score proposals by the network's softmax or by the SVMs on its features (of the "
        "layer they were trained on: fc7 by default)",
    )
    p.add_argument("--svm", metavar="SVMDIR", help="`rcnn train-svm` output (default: RUN/svm)")
    p.add_argument(
        "--bbox-reg",
        metavar="BBOXDIR",
        help="move each scored box with these regressors (`rcnn train-bbox`) before NMS",
    )
    p.add_argument("--score-thresh", type=float, help=thresh_help)
    p.add_argument(
        "--nms",
        type=float,
        default=default(DetectorConfig, "nms"),
        help="IoU above which a lower-scored box of a class is suppressed",
    )
    p.add_argument(
        "--max-per-image",
        type=int,
        default=caps.max_per_image,
        help="best boxes kept (0 = all)",
    )
    p.add_argument(
        "--max-per-class",
        type=int,
        default=caps.max_per_class,
        help="best boxes kept per image and class (0 = all)",
    )


def scoring(args, keep_all: bool = False) -> dict:
    """The :class:`DetectorConfig` fields of :func:`add_scoring_flags`."""
    return dict(scorer=args.scorer, svm=args.svm, bbox_reg=args.bbox_reg,
                score_thresh=args.score_thresh, keep_all=keep_all, nms=args.nms,
                max_per_image=args.max_per_image, max_per_class=args.max_per_class)  # fmt: skip


def _add_detector_flags(p, thresh_help: str, caps) -> None:
    """The detector's flags: :func:`add_scoring_flags`, then where proposals come from and
    how the network runs."""
    add_scoring_flags(p, thresh_help, caps)
    p.add_argument(
        "--mode",
        choices=["fast", "quality"],
        default=default(DetectorConfig, "mode"),
        help="Selective Search strategy at test time",
    )
    add_max_side(p)
    add_proposals(p)
    add_inference_flags(p)
    add_search_workers(p)
    add_cache_dir(p)
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    add_progress(p)


def _detector_config(args, keep_all: bool = False):
    return DetectorConfig(
        **scoring(args, keep_all),
        mode=args.mode,
        max_side=args.max_side,
        proposals=args.proposals,
        max_proposals=args.max_proposals,
        inference=inference(args),
        workers=args.workers,
        cache_dir=args.cache_dir,
    )


def add_detect(sub) -> None:
    p = parser(
        sub,
        "detect",
        "detect objects in images with a fine-tuned run",
        "The R-CNN detector: Selective Search proposals for each image (cached), "
        "every proposal warped and scored by the fine-tuned network in large batches, then per "
        "class a score threshold and non-maximum suppression. Writes OUT/NAME.jpg with the "
        "boxes drawn (a colour per class, the score on each box) and OUT/detections.jsonl "
        "(per image: its path, picture, size and detections, boxes as x1 y1 x2 y2 with x2, y2 "
        "exclusive, in the upright frame of an image's EXIF orientation). Unreadable images are "
        "skipped with a warning; no file in --out is replaced without --overwrite.",
    )
    add_model(p)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
    p.add_argument("--out", required=True, help="folder for the pictures and detections.jsonl")
    p.add_argument(
        "--no-exif",
        action="store_true",
        help="keep each image's pixels as stored: do not turn it upright by its EXIF "
        "orientation first (boxes are then in the stored frame)",
    )
    add_detect_flags(p)


def cmd_detect(args) -> None:
    from rcnn.detection.detect import run_detect

    summary = run_detect(
        args.model,
        args.images,
        args.out,
        _detector_config(args),
        args.classes,
        args.overwrite,
        not args.no_progress,
        exif=not args.no_exif,
    )
    print(
        f"{summary['detections']} detections in {summary['images']} images "
        f"({len(summary['skipped'])} skipped); pictures and detections.jsonl in {summary['out']}"
    )


def add_detect_flags(p) -> None:
    """:func:`_add_detector_flags` with the defaults of one image's detection (`rcnn detect`,
    `rcnn explain`): a score threshold and the caps of :class:`DetectorConfig`."""
    _add_detector_flags(
        p,
        "keep boxes scoring at least this for their class (default: 0.6 for softmax scores, "
        "0 for SVM scores)",
        DetectorConfig(),
    )


def _add_split_flags(p) -> None:
    add_dataset_flags(p, "test", "the split")
    _add_detector_flags(
        p,
        "keep only boxes scoring at least this (default: every box counts, as AP needs)",
        eval_detector_config(),
    )


def add_test(sub) -> None:
    p = parser(
        sub,
        "test",
        "detection AP on a VOC or COCO split (the devkit's rules and COCO's)",
        "Run the detector on every image of a split (all of a VOC {split}.txt, or of a COCO "
        "file), write the devkit's result files OUT/comp4_det_{split}_{class}.txt (image_id "
        "score xmin ymin xmax ymax, 1-based inclusive pixels) and a COCO results file "
        "OUT/coco_results.json, and score them:\n"
        "  VOC (the devkit's rules): per class and mean, VOC2007 11-point AP (what the R-CNN\n"
        "    paper reports) and area-under-curve AP (VOC2010+), the final recall, AP at IoU\n"
        "    0.7, and the proposals' recall at IoU 0.5;\n"
        "  COCO (pycocotools' COCOeval): AP@[.5:.95], AP50, AP75, AP of small, medium and\n"
        "    large objects, AR@100, each image's 100 best boxes (a VOC dataset's ground truth\n"
        "    is converted in memory, difficult objects as crowd regions).\n"
        "Writes metrics.json and pr.png. Every box counts (no score threshold), at most "
        "--max-per-class per image and class. A killed run continues where it stopped. "
        "With --dets DIR (devkit result files) or --dets FILE.json (a COCO results file), "
        "scores existing detections instead (no network needed).",
    )
    p.add_argument(
        "model", nargs="?", metavar="MODEL", help="run folder, best.pt, or model.pth (+ --classes)"
    )
    p.add_argument(
        "--classes",
        nargs="+",
        help="class names in training order; needed only for a plain state dict (model.pth)",
    )
    p.add_argument("--out", help="output folder (default with --dets DIR: that folder)")
    p.add_argument(
        "--dets",
        help="score the devkit result files in this folder, or this COCO results .json "
        "(category k = the k-th of --classes on a VOC dataset), instead of detecting",
    )
    p.add_argument(
        "--analyze",
        action="store_true",
        help="also sort each class's top false positives (as many as its objects) into poor "
        "localization, confusion with a similar class (VOC's animals, vehicles, furniture; a "
        "COCO file's supercategories) or "
        "another class, and background, as the R-CNN paper's Figure 5: numbers in "
        "metrics.json, bars in false_positives.png",
    )
    p.add_argument(
        "--competition",
        metavar="PREFIX",
        help="with --dets: read {PREFIX}_det_{split}_{class}.txt (e.g. comp4) when the folder "
        "holds several competitions' files",
    )
    _add_split_flags(p)


def _test_config(args):
    from rcnn.detection.testing import TestConfig

    return TestConfig(
        model=args.model,
        voc_root=args.voc_root,
        coco=args.coco,
        images=args.images,
        out=args.out,
        split=args.split,
        classes=args.classes,
        detector=_detector_config(args, keep_all=args.score_thresh is None),
        overwrite=args.overwrite,
        progress=not args.no_progress,
        analyze=getattr(args, "analyze", False),
    )


def cmd_test(args) -> None:
    from rcnn.detection.testing import run_test
    from rcnn.evaluation.result_files import evaluate_result_files

    if args.dets:
        if args.model:
            raise ConfigError("give MODEL or --dets DIR, not both")
        from rcnn.data.readers import open_dataset

        dataset = open_dataset(args.voc_root, args.coco, args.images)
        metrics = evaluate_result_files(
            args.dets, dataset, args.split, args.classes, args.out, args.competition,
            args.analyze,
        )  # fmt: skip
    else:
        if not args.model or not args.out:
            raise ConfigError("MODEL and --out are required (or --dets DIR)")
        metrics = run_test(_test_config(args))
        if not metrics:  # a torchrun process other than rank 0
            return
    print(metrics["report"])
    figures = "metrics.json, coco_results.json, pr.png" + (
        " and false_positives.png" if args.analyze else ""
    )
    print(f"{figures} in {metrics['out']}")


def add_ablate(sub) -> None:
    p = parser(
        sub,
        "ablate",
        "the R-CNN paper's Table 2: SVMs on pool5, fc6, fc7, before and after fine-tuning",
        "Train per-class SVMs on pool5, fc6 and fc7 of the network before fine-tuning (the "
        "weights the run started from: its initial.pt, or ImageNet's) and of the fine-tuned "
        "one, on the regions of --data (`rcnn prepare --preset paper`), each network's "
        "features computed once, on the fly; then score on the split, as `rcnn test` does, "
        "those six, fc7 with box regression (RUN/bbox, or trained on the fly) and the "
        "fine-tuned softmax. Writes the SVMs to OUT/heads/, each row's result files and "
        "metrics to OUT/{initial,fine-tuned}/ROW/, and the table, beside the paper's VOC2007 "
        "numbers (for reference, not measured), to OUT/ablation.md, ablation.json and "
        "ablation.png.",
    )
    p.add_argument("model", metavar="RUN", help="run folder of `rcnn train`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--data", required=True, help="`rcnn prepare --preset paper` output: the SVMs' regions"
    )
    p.add_argument("--train-split", default="trainval", help="the split of --data to train on")
    _add_split_flags(p)


def cmd_ablate(args) -> None:
    from rcnn.detection.ablate import AblationConfig, run_ablation

    args.classes = None
    if args.scorer != "softmax" or args.svm:
        raise ConfigError(
            "rcnn ablate scores every row of Table 2 itself: --scorer and --svm are for `rcnn "
            "test`; --bbox-reg gives the box regressors"
        )
    if Path(args.model).is_file():
        raise ConfigError(
            f"{args.model}: rcnn ablate needs the run folder of `rcnn train` (it reads best.pt "
            "and initial.pt), not a checkpoint file"
        )
    result = run_ablation(
        AblationConfig(_test_config(args), args.data, args.train_split, bbox_reg=args.bbox_reg)
    )
    if result:
        print(result["table"])
        print(f"per-row results in {result['out']}/{{initial,fine-tuned}}/, SVMs in "
              f"{result['out']}/heads/, table and figure in "
              f"{result['out']}/ablation.{{md,json,png}}")  # fmt: skip
