"""Warped regions for training: decoded images held once, regions cut and resized on demand.

Images are decoded once, as RGB, into one shared-memory tensor that DataLoader workers map
instead of copying. A region finds its image through ``RegionSet.image_index`` in O(1). The
dataset returns uint8 ``[3, S, S]`` tensors; normalization and the random flip happen on whole
batches (:func:`normalize`, :func:`random_flip`), on the training device, with a generator the
training loop owns, so a run is reproducible and resumable whatever the number of workers.
"""

from __future__ import annotations

import logging
import weakref
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from rcnn.data.images import read_image
from rcnn.data.regions import RegionSet, RegionStoreError

logger = logging.getLogger(__name__)


class ImageStore:
    """Every image of a region set, decoded once as RGB uint8 into shared memory.

    Args:
        paths: image files.
        threads: decoding threads.
        sizes: the ``(width, height)`` each image must have (the region store's record):
            an image replaced or resized since the regions were made is an error, not a
            silently wrong crop.
    """

    def __init__(self, paths: list[str], threads: int = 4, sizes=None):
        sizes = list(sizes) if sizes else [None] * len(paths)

        def decode(path: str, size) -> np.ndarray:
            again = "the region store refers to it (re-run `rcnn prepare`?)"
            try:
                image = read_image(path)  # BGR; converted right below
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: image missing; {again}") from None
            except OSError as err:
                raise RegionStoreError(
                    f"{path}: cannot read image ({err.strerror or err}); {again}"
                ) from None
            if image is None:
                raise RegionStoreError(f"{path}: not a readable image; {again}")
            found = (image.shape[1], image.shape[0])
            if size is not None and tuple(size) != found:
                raise RegionStoreError(
                    f"{path}: the image is {found[0]}x{found[1]} but was {size[0]}x{size[1]} "
                    "when `rcnn prepare` made the regions: it was replaced or resized since; "
                    "run `rcnn prepare` again (unchanged images reuse their cached proposals)"
                )
            return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

        with ThreadPoolExecutor(max(1, threads)) as pool:  # OpenCV decodes without the GIL
            images = list(pool.map(decode, paths, sizes))
        self.shapes = np.array([im.shape[:2] for im in images], dtype=np.int64).reshape(-1, 2)
        sizes = self.shapes[:, 0] * self.shapes[:, 1] * 3
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.data = torch.empty(int(self.offsets[-1]), dtype=torch.uint8).share_memory_()
        flat = self.data.numpy()
        for i, image in enumerate(images):
            flat[self.offsets[i] : self.offsets[i + 1]] = image.ravel()
        # The images normalized as float32 (rcnn.data.feeders.normalized_images): made by a
        # CPU feeder, shared by the feeders alive at the same time, freed with the last.
        self.normalized = weakref.WeakValueDictionary()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "normalized"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, normalized=weakref.WeakValueDictionary())

    @classmethod
    def of(cls, regions: RegionSet, threads: int = 4) -> ImageStore:
        """The images of a region set, checked against the sizes its store recorded."""
        return cls(regions.image_paths, threads, regions.image_sizes or None)

    def __len__(self) -> int:
        return len(self.shapes)

    def image(self, i: int) -> np.ndarray:
        """View of image ``i`` as ``[H, W, 3]`` RGB uint8 (no copy)."""
        height, width = self.shapes[i]
        return self.data.numpy()[self.offsets[i] : self.offsets[i + 1]].reshape(height, width, 3)


def context_box(box, size: int, pad: int) -> np.ndarray:
    """The box enlarged so that ``pad`` pixels of context surround it after warping to ``size``.

    As in R-CNN: the warped output is ``size`` pixels wide, the original box fills the central
    ``size - 2 * pad`` of it, so the box grows by ``size / (size - 2 * pad)`` about its centre.

    Returns:
        float64 ``[4]`` box, possibly reaching outside the image.
    """
    return context_boxes(np.asarray(box).reshape(1, 4), size, pad)[0]


def context_boxes(boxes: np.ndarray, size: int, pad: int) -> np.ndarray:
    """:func:`context_box` of every row of ``boxes [N, 4]``: float64 ``[N, 4]``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if pad == 0:
        return boxes.copy()
    scale = size / (size - 2 * pad)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    return np.concatenate([centre - half, centre + half], axis=1)


def warp_region(
    image: np.ndarray, box, size: int, pad: int = 0, fill=(0, 0, 0), out: np.ndarray | None = None
) -> np.ndarray:
    """Cuts ``box`` (with ``pad`` pixels of context) out of ``image`` and resizes it to a square.

    Args:
        image (ndarray[H, W, 3]): uint8 image.
        box: ``x1, y1, x2, y2`` in the project convention.
        size: output side.
        pad: context padding in output pixels (R-CNN uses 16 at size 227).
        fill: colour of context that falls outside the image (the dataset's mean colour).
        out: optional contiguous uint8 ``[size, size, 3]`` array to write into.

    Returns:
        uint8 ``[size, size, 3]`` (``out`` when given).
    """
    x1, y1, x2, y2 = np.round(context_box(box, size, pad)).astype(int).tolist()
    return warp_box(image, x1, y1, x2, y2, size, fill, out)


def warp_box(
    image: np.ndarray, x1: int, y1: int, x2: int, y2: int, size: int, fill, out=None
) -> np.ndarray:
    """Resizes the whole-pixel box ``x1, y1, x2, y2`` of ``image`` to ``[size, size]``, with
    ``fill`` for the part outside the image (see :func:`warp_region`)."""
    height, width = image.shape[:2]
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    crop = image[cy1:cy2, cx1:cx2]
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        crop = cv2.copyMakeBorder(
            crop,
            cy1 - y1,
            y2 - cy2,
            cx1 - x1,
            x2 - cx2,
            cv2.BORDER_CONSTANT,
            value=tuple(int(v) for v in fill),
        )
    return cv2.resize(crop, (size, size), dst=out, interpolation=cv2.INTER_LINEAR)


class RegionDataset(Dataset):
    """``(uint8 [3, S, S] region, label)`` for every region of a :class:`RegionSet`."""

    def __init__(
        self,
        regions: RegionSet,
        store: ImageStore,
        size: int = 227,
        pad: int = 0,
        fill=(124, 116, 104),
    ):
        if len(store) != len(regions.image_paths):
            raise ValueError("the image store does not belong to this region set")
        if not 0 <= 2 * pad < size:
            raise ValueError(f"--context-pad must be in [0, {size // 2}), got {pad}")
        self.regions, self.store = regions, store
        self.size, self.pad, self.fill = size, pad, fill

    def __len__(self) -> int:
        return len(self.regions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.store.image(self.regions.image_index[i])
        warped = warp_region(image, self.regions.boxes[i], self.size, self.pad, self.fill)
        return torch.from_numpy(warped).permute(2, 0, 1), int(self.regions.labels[i])


def worker_init(_: int) -> None:
    # Parallelism comes from the workers; OpenCV threads inside each would oversubscribe.
    cv2.setNumThreads(1)


def loader_options(workers: int, pin_memory: bool = False) -> dict:
    """DataLoader keyword arguments for ``workers`` processes sharing the image store.

    Workers start from a fresh server process rather than a fork of this one: a child forked
    while OpenCV's or torch's thread pools hold a lock can hang forever. The store's tensor
    lives in shared memory, so workers receive a handle to it, not a copy.
    """
    options = {"num_workers": workers, "pin_memory": pin_memory}
    if workers:
        methods = torch.multiprocessing.get_all_start_methods()
        options.update(
            worker_init_fn=worker_init,
            multiprocessing_context="forkserver" if "forkserver" in methods else "spawn",
            persistent_workers=True,
            prefetch_factor=4,
        )
    return options


def normalize(batch: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float ``(x / 255 - mean) / std``, keeping the memory format.

    One conversion and two in-place passes: on a CPU this is most of the input pipeline's
    cost, so no temporaries.
    """
    shift = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1) * 255
    scale = 1 / (torch.tensor(std, device=batch.device).view(1, 3, 1, 1) * 255)
    return batch.to(torch.float32).sub_(shift).mul_(scale)


def random_flip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirrors a random half (in expectation) of the batch left-right.

    Mirroring the warped region equals warping the mirrored crop, so this is the recipe's
    random horizontal flip, done once per batch instead of once per region.
    """
    flip = draw_flips(len(batch), generator).to(batch.device)
    return torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)


def draw_flips(n: int, generator: torch.Generator) -> torch.Tensor:
    """Which of ``n`` regions to mirror: the one draw every input path makes per batch, so all
    paths flip the same regions for the same generator."""
    return torch.rand(n, generator=generator) < 0.5


def mean_fill(mean) -> tuple[int, int, int]:
    """The normalization mean as a uint8 RGB colour, for context outside the image."""
    return tuple(int(round(255 * m)) for m in mean)
