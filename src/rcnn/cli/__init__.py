"""The ``rcnn`` command line: one subcommand per pipeline stage.

Each ``cmd_<name>`` turns parsed flags into the stage's config object and calls its
``run_<name>``; the work lives in the modules, where it can be called and tested alone.
Defaults shown in ``--help`` are read from those config dataclasses, the one place they are
set; the modules read to build the parser are free of torch and OpenCV, so help is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from rcnn import __version__
from rcnn.cli import data, detect, explain, export, heads, pipeline, train
from rcnn.cli.common import Formatter
from rcnn.errors import RcnnError

logger = logging.getLogger("rcnn")

COMMANDS = {
    "pipeline": (pipeline.add_pipeline, pipeline.cmd_pipeline),
    "synth": (data.add_synth, data.cmd_synth),
    "proposals": (data.add_proposals_export, data.cmd_proposals_export),
    "prepare": (data.add_prepare, data.cmd_prepare),
    "train": (train.add_train, train.cmd_train),
    "evaluate": (train.add_evaluate, train.cmd_evaluate),
    "visualize": (train.add_visualize, train.cmd_visualize),
    "compare": (train.add_compare, train.cmd_compare),
    "detect": (detect.add_detect, detect.cmd_detect),
    "test": (detect.add_test, detect.cmd_test),
    "explain": (explain.add_explain, explain.cmd_explain),
    "features": (heads.add_features, heads.cmd_features),
    "train-svm": (heads.add_train_svm, heads.cmd_train_svm),
    "train-bbox": (heads.add_train_bbox, heads.cmd_train_bbox),
    "ablate": (detect.add_ablate, detect.cmd_ablate),
    "export": (export.add_export, export.cmd_export),
    "demo": (train.add_demo, train.cmd_demo),
    "bench": (train.add_bench, train.cmd_bench),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcnn",
        formatter_class=Formatter,
        description="R-CNN on PASCAL VOC-format data.\n\n"
        "All of it on your dataset, with a report: rcnn pipeline --voc-root DIR --classes ...\n"
        "--out DIR. Stage by stage:\n"
        "          rcnn synth (optional) -> rcnn prepare -> rcnn train -> rcnn evaluate\n"
        "          -> rcnn detect (images) / rcnn test (VOC detection AP)\n"
        "          -> rcnn features -> rcnn train-svm / train-bbox -> rcnn ablate;\n"
        "rcnn export writes the detector as one ONNX or TorchScript file;\n"
        "rcnn visualize draws what pool5 units respond to.\n"
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
