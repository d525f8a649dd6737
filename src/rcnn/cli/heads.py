"""``rcnn features``, ``rcnn train-svm`` and ``rcnn train-bbox``."""

from __future__ import annotations

from pathlib import Path

from rcnn.cli.common import (
    add_config_flags,
    add_inference_flags,
    add_progress,
    config_from,
    default,
    inference,
    parser,
)
from rcnn.heads.config import BBoxConfig, FeaturesConfig, HeadConfig, SVMConfig
from rcnn.modeling.config import LAYERS

SVM_FLAGS = {
    "C": "SVM regularization",
    "pos_weight": "loss weight of positives",
    "passes": "passes over the negatives (the paper: one)",
    "retrain_every": "hard negatives that make a class train again mid-pass",
    "first_negatives": "negatives of a class's first training (its first ones, in region order)",
    "layer": "the features the SVMs score: pool5, fc6 or fc7 (the paper's Table 2 compares them)",
    "solver": "newton (warm-started, on the device) or liblinear (scikit-learn's LinearSVC)",
    "max_cache_gb": "memory of the hard-negative caches of all classes together (of all layers "
    "together where several are mined at once, as `rcnn ablate` does: each layer's share in "
    "proportion to its feature size); past it the easiest cached negatives go first",
}
BBOX_FLAGS = {
    "ridge": "ridge penalty lambda",
    "min_iou": "IoU of a training region with a box of its class",
}


def _add_head_flags(p, default_out: str) -> None:
    p.add_argument("model", metavar="MODEL", help="run folder or best.pt of `rcnn train`")
    p.add_argument(
        "--data",
        required=True,
        help="`rcnn prepare` output folder; prepare it with --preset paper, which keeps every "
        "proposal and adds the ground-truth boxes",
    )
    p.add_argument("--out", help=f"output folder (default: RUN/{default_out})")
    p.add_argument(
        "--features",
        help="a feature store to read, completed first if it lacks features (default: "
        "RUN/features when it holds this network's features of these regions, else features "
        "are computed on the fly and nothing is stored)",
    )
    p.add_argument("--split", default=default(HeadConfig, "split"), help="split to train on")
    p.add_argument("--overwrite", action="store_true", help="replace the heads already in --out")
    add_inference_flags(p)
    add_progress(p)


def _head_config(args):
    return HeadConfig(
        model=args.model,
        data=args.data,
        out=args.out,
        features=args.features,
        split=args.split,
        inference=inference(args),
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )


def add_features(sub) -> None:
    p = parser(
        sub,
        "features",
        "fc7 (and pool5, fc6) features of every region, for the SVM and box stages",
        "Warp every region of the chosen splits (no flip) and push it through the "
        "fine-tuned network in eval mode, keeping the --layers asked: fc7 (the input of the "
        "last layer: 4,096 values for AlexNet, after its ReLU), fc6 (the input of the second "
        "fully connected layer: 4,096) and pool5 (the input of the first: 9,216). Other "
        "backbones: the inputs of their last, second and first nn.Linear. Stored as float16 "
        "chunks of 4,096 regions, written "
        "atomically: a killed run resumes with the missing chunks, in the store's precision. "
        "Prints the bytes per region before it starts.",
    )
    p.add_argument("model", metavar="MODEL", help="run folder or best.pt of `rcnn train`")
    p.add_argument("--data", required=True, help="`rcnn prepare` output folder")
    p.add_argument("--out", help="feature store (default: RUN/features)")
    p.add_argument(
        "--split", nargs="+", default=default(FeaturesConfig, "splits"), dest="splits",
        help="splits",
    )  # fmt: skip
    p.add_argument(
        "--layers", nargs="+", choices=LAYERS, default=["fc7"], help="the feature taps to keep"
    )
    p.add_argument("--pool5", action="store_true", help="also pool5 (for box regression)")
    add_inference_flags(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace features of another model, other regions or another precision in --out",
    )
    add_progress(p)


def cmd_features(args) -> None:
    from rcnn.heads.config import run_part
    from rcnn.heads.extract import run_features

    out = args.out or str(run_part(args.model, "features"))
    summary = run_features(
        FeaturesConfig(
            model=args.model,
            data=args.data,
            out=out,
            splits=args.splits,
            layers=[n for n in LAYERS if n in args.layers or (n == "pool5" and args.pool5)],
            inference=inference(args),
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    )
    if summary is None:  # another process than torchrun's rank 0: rank 0 reports
        return
    for split, s in summary["splits"].items():
        print(
            f"{split}: {s['regions']} regions, {summary['bytes_per_region']} bytes a region "
            f"({' + '.join(f'{n} {d}' for n, d in summary['layers'].items())} float16, computed "
            f"in {summary['precision']}), {s['chunks_computed']} chunk(s) computed"
        )
    print(f"features in {Path(out)}")


def add_train_svm(sub) -> None:
    p = parser(
        sub,
        "train-svm",
        "per-class linear SVMs on fc7 features, with hard-negative mining",
        "R-CNN's SVMs: per class, the non-difficult ground-truth boxes are the "
        "positives and proposals with IoU < 0.3 with every box of the class the negatives. "
        "After a first training on the positives and the first --first-negatives negatives "
        "(in region order, as the original's first pass caches them), one pass "
        "over the negatives (as in the paper) scores them for every class; those above -1 "
        "(hard) join the class's cache, and a class trains again whenever --retrain-every "
        "joined, then drops cached ones below -1.2 (easy); every class trains once more at "
        "the end. liblinear's objective (hinge loss, C 0.001, positive weight 2, bias feature "
        "10), solved by Newton's method on the stage's device, each class's refit starting "
        "from its last solution (--solver liblinear: scikit-learn's LinearSVC, as the Python "
        "port); features scaled to a mean L2 norm of 20. The caches of all classes stay under "
        "--max-cache-gb. Features come from --features (or a complete RUN/features), else are "
        "computed on the fly with no store: only the positives and the caches are held. "
        "Writes svm.npz, svm.json, svm_log.csv.",
    )
    _add_head_flags(p, "svm")
    add_config_flags(p, SVMConfig, SVM_FLAGS)


def cmd_train_svm(args) -> None:
    from rcnn.heads.train import run_train_svm

    result = run_train_svm(_head_config(args), config_from(args, SVMConfig, SVM_FLAGS))
    if result is None:  # another process than torchrun's rank 0: rank 0 reports
        return
    print(f"{'class':<14}{'pass':>5}{'positives':>11}{'hard+':>7}{'easy-':>7}{'budget-':>8}"
          f"{'cache':>8}{'objective':>12}")  # fmt: skip
    for row in result["log"]:
        print(
            f"{row['class']:<14}{row['pass']:>5}{row['positives']:>11}{row['hard_added']:>7}"
            f"{row['easy_dropped']:>7}{row['budget_dropped']:>8}{row['negatives_in_cache']:>8}"
            f"{row['objective']:>12.5f}"
        )
    print(f"SVMs in {result['out']} ({result['seconds']} s; {_held(result)})")


def add_train_bbox(sub) -> None:
    p = parser(
        sub,
        "train-bbox",
        "per-class bounding-box regression on pool5 features",
        "R-CNN's box regressors: per class, ridge regression (lambda 1000) from "
        "the pool5 features of regions with IoU >= 0.6 with a box of the class (scaled to a "
        "mean L2 norm of 20) to the targets tx = (Gx - Px) / Pw, ty = (Gy - Py) / Ph, tw = "
        "log(Gw / Pw), th = log(Gh / Ph). Writes bbox.npz, bbox.json, bbox_log.csv.",
    )
    _add_head_flags(p, "bbox")
    add_config_flags(p, BBoxConfig, BBOX_FLAGS)


def cmd_train_bbox(args) -> None:
    from rcnn.heads.train import run_train_bbox

    result = run_train_bbox(_head_config(args), config_from(args, BBoxConfig, BBOX_FLAGS))
    if result is None:  # another process than torchrun's rank 0: rank 0 reports
        return
    for row in result["log"]:
        print(
            f"{row['class']}: {row['examples']} regions, target rms {row['target_rms']:.4f}, "
            f"residual rms {row['residual_rms']:.4f}"
        )
    print(f"box regressors in {result['out']} ({result['seconds']} s; {_held(result)})")


def _held(result: dict) -> str:
    """Where the features came from and the memory they took."""
    memory = result["memory"]
    if result["features"] == "computed on the fly":
        return (f"features of {memory['regions_computed']} regions computed on the fly, no "
                f"store; held: images {memory['images_mb']} MB, features "
                f"{memory['features_mb']} MB")  # fmt: skip
    return f"features from {result['features']}; held: {memory['features_mb']} MB of features"
