"""The region store: labelled regions of one split as a few flat arrays.

A store is a directory::

    meta.json         format, version, classes, image paths and sizes, labelling settings, and
                      the dtype, shape and SHA-256 of every array below
    image_index.npy   int32 [N]     index into meta["images"] of each region's image
    boxes.npy         int32 [N, 4]  x1, y1, x2, y2; 0-based, x2/y2 exclusive
    labels.npy        int16 [N]     0 = background, 1..K = meta["classes"][label - 1]
    ious.npy          float32 [N]   best IoU with a ground-truth box
    gt_index.npy      int32 [N]     row of gt_boxes a region overlaps most, -1 if none
    class_ious.npy    float32 [N, K] best IoU with a box of each class
    is_gt.npy         bool [N]      the region is a ground-truth box itself
    gt_boxes.npy      int32 [G, 4]  every ground-truth box of the chosen classes
    gt_labels.npy     int16 [G]     its class, 1..K
    gt_image.npy      int32 [G]     its image
    gt_difficult.npy  bool [G]      VOC's difficult flag

Version 1 stores (without the last seven arrays) still load, for training; the SVM and
box-regression stages ask for a store made again. 31 + 4K bytes a region (26 for the training
arrays) plus 23 a ground-truth box; a million regions load in a fraction of a second. Every
file is written
atomically and ``meta.json`` last, and loading checks each array against its recorded
checksum, so a half-written or damaged store is reported, never read.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rcnn.errors import ConfigError, RcnnError
from rcnn.files import (
    DamagedFileError,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    require_keys,
)

FORMAT = "rcnn-regions"
VERSION = 2
VERSIONS = (1, 2)  # version 1 stores lack the ground-truth arrays; they still load
ARRAYS = {"image_index": np.int32, "boxes": np.int32, "labels": np.int16, "ious": np.float32}
# Version 2: what the SVM and box-regression stages need (see :class:`RegionTruth`).
DETAIL_ARRAYS = {"gt_index": np.int32, "class_ious": np.float32, "is_gt": np.bool_}
GT_ARRAYS = {"boxes": np.int32, "labels": np.int16, "image": np.int32, "difficult": np.bool_}


class RegionStoreError(RcnnError):
    """A region store is missing, incomplete or damaged; the message names the file."""


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@dataclass
class RegionTruth:
    """Every ground-truth box of a split, and how the regions relate to them.

    Attributes:
        boxes (int32 [G, 4]), labels (int16 [G], 1..K), image (int32 [G]), difficult (bool [G]):
            the boxes of the chosen classes (difficult ones only when the labelling kept them).
        gt_index (int32 [N]): per region, the row of the box it overlaps most; -1 if none.
        class_ious (float32 [N, K]): per region, the best IoU with a box of each class.
        is_gt (bool [N]): the region is a ground-truth box itself (``--preset paper``).
    """

    boxes: np.ndarray
    labels: np.ndarray
    image: np.ndarray
    difficult: np.ndarray
    gt_index: np.ndarray
    class_ious: np.ndarray
    is_gt: np.ndarray

    def __post_init__(self):
        for name, dtype in {**GT_ARRAYS, **DETAIL_ARRAYS}.items():
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=dtype))
        self.boxes = self.boxes.reshape(-1, 4)

    def arrays(self) -> dict[str, np.ndarray]:
        """File name stem -> array, as stored."""
        out = {f"gt_{name}": getattr(self, name) for name in GT_ARRAYS}
        return {**out, **{name: getattr(self, name) for name in DETAIL_ARRAYS}}


@dataclass
class RegionSet:
    """Labelled regions of one split (see the module docstring for the on-disk format)."""

    image_paths: list[str]
    image_index: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    ious: np.ndarray
    classes: list[str]
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height)
    info: dict = field(default_factory=dict)  # how the regions were made
    truth: RegionTruth | None = None  # None for version-1 stores

    def __post_init__(self):
        for name, dtype in ARRAYS.items():
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=dtype))
        self.boxes = self.boxes.reshape(-1, 4)
        n = len(self.labels)
        if not (len(self.image_index) == len(self.boxes) == len(self.ious) == n):
            raise ValueError("image_index, boxes, labels and ious must have the same length")
        if n and (self.image_index.min() < 0 or self.image_index.max() >= len(self.image_paths)):
            raise ValueError("image_index refers to an image that is not in image_paths")
        if n and self.labels.max() > len(self.classes):
            raise ValueError(f"a label exceeds the {len(self.classes)} classes {self.classes}")
        if self.truth is not None and not (
            len(self.truth.gt_index) == len(self.truth.is_gt) == len(self.truth.class_ious) == n
        ):
            raise ValueError("the ground-truth details must have one row per region")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_positive(self) -> int:
        return int(np.count_nonzero(self.labels > 0))

    @property
    def num_negative(self) -> int:
        return int(np.count_nonzero(self.labels == 0))

    def require_truth(self, what: str) -> RegionTruth:
        """The ground-truth details, or an error saying how to get them."""
        if self.truth is None:
            where = self.info.get("split", "this split")
            raise RegionStoreError(
                f"{what} needs the ground-truth arrays of a version-{VERSION} region store, and "
                f"the store of {where} is older: run `rcnn prepare` again (cached proposals are "
                "reused)"
            )
        return self.truth

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        arrays = {}
        named = {name: getattr(self, name) for name in ARRAYS}
        if self.truth is not None:
            named.update(self.truth.arrays())
        for name, array in named.items():
            data = _npy_bytes(array)
            atomic_write_bytes(directory / f"{name}.npy", data)
            arrays[name] = {
                "dtype": array.dtype.str,
                "shape": list(array.shape),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "classes": self.classes,
            "images": self.image_paths,
            "image_sizes": [list(s) for s in self.image_sizes],
            "info": self.info,
            "arrays": arrays,
        }
        atomic_write_json(directory / "meta.json", meta)

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True) -> RegionSet:
        """Loads a store written by :meth:`save`.

        Raises:
            RegionStoreError: a file is missing, truncated, or does not match its checksum.
        """
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise RegionStoreError(
                f"{meta_path} not found: {directory} is not a region store "
                "(create one with `rcnn prepare --voc-root DIR --out OUT`)"
            )
        try:
            meta = read_json(meta_path, "region store description")
        except DamagedFileError as err:
            raise RegionStoreError(f"{err}; run `rcnn prepare` again") from None
        if meta.get("format") != FORMAT or meta.get("version") not in VERSIONS:
            raise RegionStoreError(
                f"{meta_path}: not a version-{VERSION} {FORMAT} store "
                f"(format={meta.get('format')!r}, version={meta.get('version')!r}); "
                "run `rcnn prepare` again"
            )
        require_keys(meta, ("classes", "images", "arrays"), meta_path, "rcnn prepare")
        specs = meta["arrays"]
        require_keys(specs, ARRAYS, meta_path, "rcnn prepare")
        arrays = {name: _load_array(directory, name, specs[name], verify) for name in ARRAYS}
        truth = None
        if "gt_index" in specs:
            names = [f"gt_{n}" for n in GT_ARRAYS] + list(DETAIL_ARRAYS)
            require_keys(specs, names, meta_path, "rcnn prepare")
            loaded = {n: _load_array(directory, n, specs[n], verify) for n in names}
            truth = RegionTruth(
                **{n: loaded[f"gt_{n}"] for n in GT_ARRAYS},
                **{n: loaded[n] for n in DETAIL_ARRAYS},
            )
        return cls(
            image_paths=list(meta["images"]),
            classes=list(meta["classes"]),
            image_sizes=[tuple(s) for s in meta.get("image_sizes", [])],
            info=meta.get("info", {}),
            truth=truth,
            **arrays,
        )


def _load_array(directory: Path, name: str, spec: dict, verify: bool) -> np.ndarray:
    path = directory / f"{name}.npy"
    if not path.is_file():
        raise RegionStoreError(f"{path} not found; the store is incomplete, run prepare again")
    data = path.read_bytes()
    if verify and hashlib.sha256(data).hexdigest() != spec["sha256"]:
        raise RegionStoreError(
            f"{path}: checksum mismatch with meta.json; the file is damaged or from another "
            "run, run `rcnn prepare` again (cached proposals are reused)"
        )
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as err:
        raise RegionStoreError(f"{path}: unreadable ({err})") from err
    if list(array.shape) != spec["shape"] or array.dtype.str != spec["dtype"]:
        raise RegionStoreError(f"{path}: shape/dtype {array.shape}/{array.dtype} != meta.json")
    return array


def store_dir(data: str | Path, split: str, allow_store: bool = False, flag: str = "--split"):
    """The folder of ``data/split``, a `rcnn prepare` output folder's store (or, with
    ``allow_store``, ``data`` when it is a store itself); ``flag`` is the flag that chooses
    the split, named when ``data`` lacks it."""
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"--data {data}: folder not found (create it with `rcnn prepare`)")
    if (data / "meta.json").is_file():
        if allow_store:
            return data
        raise ConfigError(
            f"--data {data} is a single region store; give the `rcnn prepare` output folder "
            f"that holds train/ and val/ (here perhaps {data.parent})"
        )
    if not (data / split / "meta.json").is_file():
        stores = sorted(p.name for p in data.iterdir() if (p / "meta.json").is_file())
        if stores:
            raise RegionStoreError(
                f"--data {data} has no split {split!r} (it has {', '.join(stores)}); choose one "
                f"with {flag}, or prepare {split!r} with `rcnn prepare --split {split}`"
            )
    return data / split


def load_split(
    data: str | Path, split: str, allow_store: bool = False, flag: str = "--split"
) -> RegionSet:
    """``data/split`` of a `rcnn prepare` output folder, or, with ``allow_store``, ``data``
    when it is a store itself (see :func:`store_dir`)."""
    return RegionSet.load(store_dir(data, split, allow_store, flag))


def load_train_val(data: str | Path) -> tuple[RegionSet, RegionSet]:
    """The train and val stores of one `rcnn prepare` run."""
    train, val = load_split(data, "train"), load_split(data, "val")
    if train.classes != val.classes:
        raise RcnnError(
            f"--data {data}: train classes {train.classes} != val classes {val.classes}"
        )
    if train.info.get("generation") != val.info.get("generation"):
        raise RcnnError(
            f"--data {data}: train/ and val/ come from different `rcnn prepare` runs; "
            "run `rcnn prepare` again to make them together"
        )
    return train, val
