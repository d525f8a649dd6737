"""What every command shares: the help formatter, defaults read from the config
dataclasses, and the flags that several commands take, each declared once."""

from __future__ import annotations

import argparse
import dataclasses

from rcnn.data.config import ProposalConfig
from rcnn.runtime.config import AMP_HELP, DEVICE_HELP, InferenceConfig


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps description layout and appends a flag's default where it has a meaningful one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def default(cls, name: str):
    """The default of field ``name`` of the dataclass ``cls``."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def add_config_flags(p, cls, helps: dict[str, str]) -> None:
    """``--name`` for each field of the dataclass ``cls`` named in ``helps`` (its help text),
    with the field's type and default."""
    for name, text in helps.items():
        value = default(cls, name)
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=type(value), default=value, dest=name, help=text)


def config_from(args, cls, names, **values):
    """``cls`` built from the parsed flags of the same ``names`` (and ``values``)."""
    return cls(**{name: getattr(args, name) for name in names}, **values)


def parser(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, formatter_class=Formatter, help=help, description=description)


def add_progress(p) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_device(p, default_value: str | None = "auto") -> None:
    p.add_argument("--device", default=default_value, help=DEVICE_HELP)


def add_amp(p) -> None:
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help=AMP_HELP)


def add_inference_flags(p) -> None:
    """Where and how the network scores regions: one set of flags with one help text."""
    add_device(p, default(InferenceConfig, "device"))
    p.add_argument(
        "--batch",
        type=int,
        default=default(InferenceConfig, "batch"),
        help="regions a forward pass (0: 1024 on CUDA, 256 elsewhere)",
    )
    add_amp(p)
    p.add_argument(
        "--threads",
        type=int,
        default=default(InferenceConfig, "threads"),
        help="threads that cut and resize regions on the CPU; they change no result (the "
        "network's CPU kernels use PyTorch's threads: OMP_NUM_THREADS, 1 a process under "
        "torchrun)",
    )


def inference(args):
    return InferenceConfig(device=args.device, batch=args.batch, amp=args.amp, threads=args.threads)


def add_model(p, model_help: str = "run folder, best.pt, or model.pth (+ --classes)") -> None:
    p.add_argument("model", metavar="MODEL", help=model_help)
    p.add_argument(
        "--classes",
        nargs="+",
        help="class names in training order; needed only for a plain state dict (model.pth)",
    )


def add_max_side(p) -> None:
    p.add_argument(
        "--max-side",
        type=int,
        default=default(ProposalConfig, "max_side"),
        help="images whose longer side is larger are shrunk to this for Selective Search, "
        "whose time and memory grow with the pixels (0 = never); boxes are mapped back",
    )


def add_proposals(p) -> None:
    p.add_argument(
        "--proposals",
        metavar="FILE",
        help="precomputed proposals instead of Selective Search: a .mat file of R-CNN's and "
        "Fast R-CNN's layout ('boxes', one [y1 x1 y2 x2] 1-based array an image; 'images', "
        "their ids), e.g. selective_search_data/voc_2007_test.mat, or one `rcnn proposals` "
        "wrote",
    )
    add_max_proposals(p)


def add_max_proposals(p) -> None:
    """``--max-proposals``: the boxes read of one image of a proposal file."""
    from rcnn.data.config import DEFAULT_MAX_PROPOSALS

    p.add_argument(
        "--max-proposals",
        type=int,
        default=DEFAULT_MAX_PROPOSALS,
        help="boxes read of one image of a --proposals file: the first ones in the file's "
        "order (R-CNN's files rank them; they hold about 2,000 an image); each costs its warped "
        "crop in memory; 0 = all (default %(default)s)",
    )


def add_search_workers(p) -> None:
    """``--workers``: the Selective Search processes, one flag with one help text."""
    p.add_argument(
        "--workers", type=int, default=0, help="Selective Search processes (0 = one per core)"
    )


def add_cache_dir(p) -> None:
    p.add_argument(
        "--cache-dir",
        default=None,
        help="proposal cache (default: $RCNN_CACHE_DIR, else $XDG_CACHE_HOME/rcnn or "
        "~/.cache/rcnn)",
    )


def add_dataset_flags(p, split_default, split_help: str, splits: bool = False) -> None:
    """The dataset: a VOC folder, or a COCO instances file and its images' folder."""
    data = p.add_argument_group(
        "dataset (a VOC folder, or a COCO file and its images)",
        "COCO: one instances file a split; {split} in --coco and --images is replaced by the "
        "split's name, e.g. --coco coco/annotations/instances_{split}.json --images "
        "coco/{split} --split train=train2017 val=val2017 (STORE=SPLIT: `rcnn prepare` stores "
        "the split as train/ and val/, which training reads). Crowd annotations count as VOC's "
        "difficult objects; categories are matched to --classes by name.",
    )
    data.add_argument(
        "--voc-root",
        help="folder holding Annotations/, JPEGImages/, ImageSets/Main/ (e.g. VOCdevkit/VOC2007)",
    )
    data.add_argument("--coco", metavar="FILE", help="COCO instances JSON (instead of --voc-root)")
    data.add_argument("--images", metavar="DIR", help="with --coco: the folder of its images")
    data.add_argument(
        "--split",
        nargs="+" if splits else None,
        default=split_default,
        dest="splits" if splits else "split",
        help=f"{split_help} (VOC: ImageSets/Main/{{split}}.txt; COCO: the file's images)",
    )
