"""Selective Search region proposals, computed in parallel and cached on disk.

OpenCV returns the same set of boxes in a different order from run to run, so boxes are stored
deduplicated in lexicographic order: the same image and parameters always give the same bytes.
The cache is keyed by the image's content and the parameters, and every entry is written to a
temporary file first and renamed into place, so a run killed at any moment leaves only whole
entries behind and the next run reuses them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import signal
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from rcnn.data.config import ProposalConfig
from rcnn.data.images import (
    ImageDepthError,
    ImageTooLargeError,
    check_image_size,
    decode_image,
    image_size,
)
from rcnn.data.search_pool import SearchWorkers
from rcnn.files import atomic_write_bytes, read_regular_file
from rcnn.ops.boxes import clip_boxes, nonempty, unique_boxes
from rcnn.progress import progress_bar

logger = logging.getLogger(__name__)


@dataclass
class ProposalResult:
    path: str
    boxes: np.ndarray | None  # int32 [K, 4] in the project convention; None on error
    size: tuple[int, int] = (0, 0)  # width, height of the full-size image
    cached: bool = False
    error: str = ""


def default_cache_dir() -> Path:
    """``$RCNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/rcnn``, else ``~/.cache/rcnn``."""
    if os.environ.get("RCNN_CACHE_DIR"):
        return Path(os.environ["RCNN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rcnn"


def selective_search(image_bgr: np.ndarray, config: ProposalConfig) -> np.ndarray:
    """Selective Search boxes of one BGR uint8 image, as unique sorted int32 ``[K, 4]``."""
    height, width = image_bgr.shape[:2]
    scale = 1.0
    if config.max_side and max(height, width) > config.max_side:
        scale = config.max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image_bgr = cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(image_bgr)
    if config.mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    rects = np.asarray(search.process(), dtype=np.float64).reshape(-1, 4)  # x, y, w, h
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) / scale
    boxes = clip_boxes(np.round(boxes).astype(np.int32), width, height)
    return unique_boxes(boxes[nonempty(boxes)])


class ProposalCache:
    """Content-addressed store of proposals: ``root/proposals/ab/abcdef....npz``."""

    def __init__(self, root: str | Path):
        self.root = Path(root) / "proposals"

    @staticmethod
    def key(image_bytes: bytes, config: ProposalConfig) -> str:
        """The entry of an image's proposals under ``config`` (as the image gets it: see
        :meth:`ProposalConfig.for_image`)."""
        config = config.for_image(image_size(image_bytes))
        digest = hashlib.sha256(config.cache_tag().encode())
        digest.update(image_bytes)
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> tuple[np.ndarray, tuple[int, int]] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path) as data:
                return data["boxes"], tuple(int(v) for v in data["size"])
        except Exception as err:  # a damaged entry is recomputed, never trusted
            logger.warning("ignoring unreadable cache entry %s (%s)", path, err)
            return None

    def put(self, key: str, boxes: np.ndarray, size: tuple[int, int]) -> None:
        buf = io.BytesIO()
        np.savez(buf, boxes=boxes.astype(np.int32), size=np.asarray(size, dtype=np.int32))
        atomic_write_bytes(self.path(key), buf.getvalue())


def _read(path: str) -> tuple[bytes | None, str]:
    """The bytes of an image file, or why it cannot be used (a cached image too: the pixel
    limit may have been lowered since)."""
    try:
        data = read_regular_file(path)
        check_image_size(data, path)
    except OSError as err:
        return None, f"{path}: cannot read image ({err.strerror or err})"
    except ImageTooLargeError as err:
        return None, str(err)
    return data, ""


def image_size_of(path: str) -> tuple[tuple[int, int] | None, str]:
    """``(width, height)`` of an image from its header, or why it cannot be used."""
    data, error = _read(path)
    if data is None:
        return None, error
    size = image_size(data)
    return (size, "") if size is not None else (None, f"{path}: not a readable image")


def _compute_one(job: tuple[str, str, ProposalConfig, str | None]) -> ProposalResult:
    """Searches one image whose cache ``key`` the caller found missing, and caches it."""
    path, key, config, cache_root = job
    data, error = _read(path)
    if data is None:
        return ProposalResult(path, None, error=error)
    try:
        image = decode_image(data, path)
    except ImageDepthError as err:
        return ProposalResult(path, None, error=str(err))
    if image is None:
        what = "an empty file" if not data else "not a readable image (corrupt JPEG?)"
        return ProposalResult(path, None, error=f"{path}: {what}")
    try:
        boxes = selective_search(image, config)
    except cv2.error as err:
        return ProposalResult(path, None, error=f"{path}: Selective Search failed ({err.msg})")
    size = (image.shape[1], image.shape[0])
    if cache_root is not None:
        ProposalCache(cache_root).put(key, boxes, size)
    return ProposalResult(path, boxes, size)


def _init_worker() -> None:
    # One OpenCV thread per process: the parallelism is across images.
    cv2.setNumThreads(1)
    # Ctrl-C reaches the whole process group. The parent stops the pool; a worker that died
    # of it instead would lose its task and leave the parent waiting for it forever.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def compute_proposals(
    image_paths: list[str],
    config: ProposalConfig,
    cache_dir: str | Path | None,
    workers: int = 0,
    progress: bool = True,
) -> list[ProposalResult]:
    """Proposals for every image, in the order given.

    Cached images are answered in this process; the rest are searched in ``workers`` processes
    (0 = one per core), once per distinct content: identical files share one search. Errors
    (unreadable or corrupt images) come back in ``result.error``.
    """
    with ProposalPool(config, cache_dir, workers) as pool:
        return pool.compute(image_paths, progress)


class ProposalPool:
    """Worker processes that stay up between calls of :meth:`compute` (the detector asks for a
    few images at a time); started at the first search a call needs, stopped on exit."""

    def __init__(self, config: ProposalConfig, cache_dir: str | Path | None, workers: int = 0):
        self.config, self.workers = config, workers or os.cpu_count() or 1
        self.cache = ProposalCache(cache_dir) if cache_dir is not None else None
        self.cache_root = str(cache_dir) if cache_dir is not None else None
        self.pool = None

    def __enter__(self) -> ProposalPool:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            # Called bare when a search failed or was interrupted: busy workers are killed.
            self.pool.terminate(kill=not exc or exc[0] is not None)
            self.pool = None

    def _map(self, jobs: list):
        if self.workers <= 1 or len(jobs) <= 1:
            return map(_compute_one, jobs)
        if self.pool is None:
            # Processes that do not import the caller's main module (see search_pool): a
            # script without a main guard would otherwise be run again by every worker.
            self.pool = SearchWorkers(self.workers)
        return self.pool.imap(_compute_one, jobs)

    def compute(
        self, image_paths: list[str], progress: bool = False, names=None
    ) -> list[ProposalResult]:
        """Proposals for every image, in the order given (see :func:`compute_proposals`);
        ``names`` are for :class:`rcnn.data.proposal_files.FileProposals`'s calls."""
        results: list[ProposalResult | None] = [None] * len(image_paths)
        todo: dict[str, list[int]] = {}  # cache key -> the images with that content
        for i, path in enumerate(image_paths):
            data, error = _read(path)
            if data is None:
                results[i] = ProposalResult(path, None, error=error)
                continue
            key = ProposalCache.key(data, self.config)
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                results[i] = ProposalResult(path, hit[0], hit[1], cached=True)
            else:
                todo.setdefault(key, []).append(i)
        jobs = [
            (image_paths[same[0]], key, self.config, self.cache_root) for key, same in todo.items()
        ]
        pending = sum(len(same) for same in todo.values())
        bar = progress_bar(
            total=len(image_paths),
            initial=len(image_paths) - pending,
            desc="proposals",
            unit="img",
            enabled=progress,
        )
        with bar:
            try:
                for same, result in zip(todo.values(), self._map(jobs), strict=True):
                    for i in same:
                        results[i] = replace(result, path=image_paths[i])
                    bar.update(len(same))
            except BaseException:
                self.__exit__()  # workers may be mid-search: stop them
                raise
        return results
