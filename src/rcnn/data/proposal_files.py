"""Precomputed proposals in R-CNN's and Fast R-CNN's ``.mat`` layout, read in place of
Selective Search, and written from this project's own searches in the same layout.

The layout (``selective_search_data/voc_2007_trainval.mat``, read by Fast R-CNN's
``pascal_voc.py`` with ``scipy.io.loadmat``): ``boxes``, a cell array of one ``[K, 4]`` array
an image of ``[y1 x1 y2 x2]`` 1-based inclusive pixels, and ``images``, the image ids in the
same order. Boxes convert once, in :func:`rcnn.data.annotations.mat_to_boxes`. A box of
non-finite numbers, or empty, is left out, and one past the image is clipped to it, each kind
named in one warning for the images read through one source; an image of the split that the
file lacks is an error naming it. Of an image with more than ``--max-proposals`` boxes only
the first ones in the file's order are read (R-CNN's files list them by Selective Search's
rank), the images named in a warning.

The file's SHA-256 is its identity: region stores and ``rcnn test`` folders record it, so
proposals that change are never mixed with results made from others.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcnn.data.annotations import DatasetError, boxes_to_mat, mat_to_boxes
from rcnn.data.proposals import ProposalResult, image_size_of
from rcnn.files import atomic_write_bytes, read_regular_file
from rcnn.ops.boxes import clip_boxes, nonempty, unique_boxes

logger = logging.getLogger(__name__)

LAYOUT = (
    "expected R-CNN's layout: 'boxes', a cell of one [K, 4] array an image of [y1 x1 y2 x2] "
    "1-based pixels, and 'images', the image ids in the same order"
)


class ProposalFileError(DatasetError):
    """A proposal file is missing, of another layout, or lacks images; the message names it."""


@dataclass
class ProposalFile:
    """The proposals of a ``.mat`` file: per image id, float64 ``[K, 4]`` boxes in the project
    convention (not clipped yet: the file does not know the images' sizes)."""

    path: Path
    boxes: dict[str, np.ndarray]
    digest: str

    def tag(self, cap: int = 0) -> str:
        """What proposals of it are: its digest, and the cap where the cap cuts an image's."""
        cut = cap and max((len(b) for b in self.boxes.values()), default=0) > cap
        return f"file/sha256={self.digest}" + (f"/first={cap}" if cut else "")

    def record(self) -> dict:
        """What outputs made from these proposals record of them."""
        return {"file": str(self.path.resolve()), "sha256": self.digest}

    def check_ids(self, ids: list[str], where: str) -> None:
        """Refuses a split with images the file has no proposals for."""
        missing = [i for i in ids if i not in self.boxes]
        if missing:
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            raise ProposalFileError(
                f"--proposals {self.path} has no proposals for {len(missing)} image(s) of "
                f"{where}: {shown}; is it the file of this split?"
            )


@functools.cache
def _read(path: str, size: int, mtime: int) -> ProposalFile:
    data = read_regular_file(path)
    digest = hashlib.sha256(data).hexdigest()
    from io import BytesIO

    from scipy.io import loadmat

    try:
        mat = loadmat(BytesIO(data))
    except NotImplementedError:  # scipy's answer to HDF5-based files
        raise ProposalFileError(
            f"--proposals {path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read: save "
            "it again with save(..., '-v7')"
        ) from None
    except Exception as err:  # not a .mat file at all, or a damaged one
        raise ProposalFileError(f"--proposals {path}: not a readable .mat file ({err})") from None
    if "boxes" not in mat or "images" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ProposalFileError(f"--proposals {path} holds {found}; {LAYOUT}")
    ids = [_image_id(item, path) for item in np.asarray(mat["images"]).ravel()]
    cells = np.asarray(mat["boxes"]).ravel()
    if len(cells) != len(ids):
        raise ProposalFileError(
            f"--proposals {path}: {len(cells)} box arrays for {len(ids)} images; {LAYOUT}"
        )
    twice = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if twice:
        raise ProposalFileError(f"--proposals {path} lists image {twice[0]} twice")
    boxes = {
        image_id: _boxes(cell, path, image_id) for image_id, cell in zip(ids, cells, strict=True)
    }
    return ProposalFile(Path(path), boxes, digest)


def read_proposal_file(path: str | Path) -> ProposalFile:
    """The proposals of a ``.mat`` file (read once a process while the file is unchanged)."""
    try:
        found = Path(path).stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"--proposals {path}: file not found") from None
    return _read(str(path), found.st_size, found.st_mtime_ns)


def _image_id(item, path) -> str:
    """An id of ``images``: a string, or a cell holding one (``loadmat``'s two spellings)."""
    value = np.asarray(item).ravel()
    if value.dtype.kind == "O" and len(value) == 1:
        value = np.asarray(value[0]).ravel()
    if value.dtype.kind != "U" or len(value) != 1:
        raise ProposalFileError(
            f"--proposals {path}: an entry of 'images' is not a string; {LAYOUT}"
        )
    return str(value[0]).strip()


def _boxes(cell, path, image_id: str) -> np.ndarray:
    array = np.asarray(cell)
    if array.size == 0:
        return np.zeros((0, 4))
    if array.dtype.kind not in "iuf" or array.ndim != 2 or array.shape[1] != 4:
        raise ProposalFileError(
            f"--proposals {path}: the boxes of image {image_id} are {array.dtype} "
            f"{list(array.shape)}, not [K, 4] numbers; {LAYOUT}"
        )
    return mat_to_boxes(array.astype(np.float64))


def write_proposal_file(path: str | Path, ids: list[str], boxes: list[np.ndarray]) -> None:
    """Writes the proposals of ``ids`` (project-convention boxes) in R-CNN's layout."""
    from io import BytesIO

    from scipy.io import savemat

    cells = np.empty((1, len(ids)), dtype=object)
    for i, image_boxes in enumerate(boxes):
        cells[0, i] = boxes_to_mat(image_boxes)
    names = np.empty((len(ids), 1), dtype=object)
    for i, image_id in enumerate(ids):
        names[i, 0] = image_id
    buf = BytesIO()
    savemat(buf, {"boxes": cells, "images": names}, do_compression=True)
    data = bytearray(buf.getvalue())
    # The MAT header's 116 bytes of text hold the time of writing: a fixed text instead, so
    # the same proposals give the same bytes.
    data[:116] = b"MATLAB 5.0 MAT-file, written by rcnn proposals".ljust(116)
    atomic_write_bytes(path, bytes(data))


class FileProposals:
    """Proposals from a file where Selective Search would run: the same calls as
    :class:`rcnn.data.proposals.ProposalPool` (``compute(paths)``, a context), each image
    found by its id (``names``, else its file name without extension)."""

    workers = 1

    def __init__(self, path: str | Path, max_proposals: int = 0):
        self.file = read_proposal_file(path)
        self.max_proposals = max_proposals  # 0 = every box
        # The images whose boxes were clipped, dropped or cut, told once, on leaving.
        self.seen: dict[str, dict[str, int]] = {"clipped": {}, "dropped": {}, "cut": {}}

    def __enter__(self) -> FileProposals:
        return self

    def __exit__(self, *exc) -> None:
        self.warn()

    def warn(self) -> None:
        """One warning a kind, with the totals of every image read since the last one."""
        seen, path, cap = self.seen, self.file.path, self.max_proposals
        if seen["cut"]:
            shown = ", ".join(f"{i} ({n:,})" for i, n in list(seen["cut"].items())[:5])
            logger.warning("--proposals %s: %d image(s) have more than --max-proposals %d boxes; "
                           "the first %d of each, in the file's order, are read: %s", path,
                           len(seen["cut"]), cap, cap, shown)  # fmt: skip
        for kind, what in (("clipped", "past the image, clipped to it"),
                           ("dropped", "empty, repeated or not finite, left out")):  # fmt: skip
            if seen[kind]:
                logger.warning("--proposals %s: %d box(es) of %d image(s) %s: %s", path,
                               sum(seen[kind].values()), len(seen[kind]), what,
                               ", ".join(list(seen[kind])[:5]))  # fmt: skip
        self.seen = {kind: {} for kind in seen}

    def compute(self, image_paths: list[str], progress: bool = False, names=None):
        """A :class:`ProposalResult` an image: the file's first ``max_proposals`` boxes clipped
        to the image, the empty and non-finite ones left out (told on leaving the context)."""
        names = names or [Path(p).stem for p in image_paths]
        results, seen = [], self.seen
        for path, name in zip(image_paths, names, strict=True):
            boxes = self.file.boxes.get(name)
            if boxes is None:
                error = f"--proposals {self.file.path} has no proposals for image {name}"
                results.append(ProposalResult(path, None, error=error))
                continue
            size, error = image_size_of(path)
            if error:
                results.append(ProposalResult(path, None, error=error))
                continue
            if self.max_proposals and len(boxes) > self.max_proposals:
                seen["cut"][name] = len(boxes)
                boxes = boxes[: self.max_proposals]
            finite = np.isfinite(boxes).all(axis=1)
            whole = np.round(boxes[finite]).astype(np.int32)
            inside = clip_boxes(whole, *size)
            if (inside != whole).any():
                seen["clipped"][name] = int((inside != whole).any(axis=1).sum())
            kept = unique_boxes(inside[nonempty(inside)])
            if len(kept) < len(boxes):
                seen["dropped"][name] = len(boxes) - len(kept)
            results.append(ProposalResult(path, kept, size, cached=True))
        return results


def proposal_source(config, cache_dir, workers: int = 0):
    """Where proposals come from: the file of ``config.file``, else Selective Search (a
    :class:`rcnn.data.proposals.ProposalPool` over the cache)."""
    from rcnn.data.proposals import ProposalPool

    if config.file:
        return FileProposals(config.file, config.max_proposals)
    return ProposalPool(config, cache_dir, workers)


def export_proposals(dataset, split: str, config, cache_dir, out: str, workers: int = 0,
                     progress: bool = True) -> dict:  # fmt: skip
    """Writes the Selective Search proposals of every image of a split (from the cache, or
    searched now) to ``out`` in R-CNN's layout; returns a summary. An image that cannot be read
    is left out of the file, with a warning naming it."""
    from rcnn.data.proposals import compute_proposals

    ids = dataset.ids(split)
    paths = [str(dataset.image_path(i)) for i in ids]
    results = compute_proposals(paths, config, cache_dir, workers, progress)
    kept = [(i, r) for i, r in zip(ids, results, strict=True) if not r.error]
    for image_id, r in zip(ids, results, strict=True):
        if r.error:
            logger.warning("left out of %s: %s (%s)", out, image_id, r.error)
    write_proposal_file(out, [i for i, _ in kept], [r.boxes for _, r in kept])
    boxes = sum(len(r.boxes) for _, r in kept)
    return {"out": out, "images": len(kept), "skipped": len(ids) - len(kept), "boxes": boxes,
            "from_cache": sum(r.cached for _, r in kept)}  # fmt: skip
