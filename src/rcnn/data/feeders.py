"""Batch feeders: where normalized ``[B, 3, S, S]`` region batches on the device come from.

Three paths produce the same batches:

* :class:`ThreadFeeder` (CPU path, the default without CUDA): images normalized once; threads
  cut and resize regions with OpenCV straight into a recycled batch buffer, a batch ahead.
* :class:`LoaderFeeder`: uint8 regions warped in DataLoader worker processes that map the shared
  image store; the batch is moved to the device and normalized there.
* :class:`DeviceFeeder` (GPU path, the default on CUDA): every image is uploaded once,
  normalized, into one padded tensor; each batch is warped at once with
  ``torchvision.ops.roi_align`` (``aligned=True``, one sample per output pixel, which is
  bilinear resizing with OpenCV's pixel-centre convention). No workers, no per-region Python.

All pad context outside the image with the normalization mean: zero after normalizing, or
its nearest uint8 colour on the uint8 ``loader`` path. Each
feeder's ``iterate(flips)`` also applies the recipe's random horizontal flip, drawn from the
training loop's generator the same way on every path (:func:`rcnn.data.warps.draw_flips`); plain
iteration is unflipped, as validation needs.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from rcnn.data.regions import RegionSet
from rcnn.data.warps import (
    ImageStore,
    RegionDataset,
    context_boxes,
    draw_flips,
    loader_options,
    mean_fill,
    normalize,
    random_flip,
    warp_box,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Warp:
    """How regions become network inputs: warped to ``size`` x ``size`` with ``pad`` pixels of
    context, normalized by ``mean`` and ``std`` (RGB, in [0, 1] units)."""

    size: int
    pad: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def pipeline_for(pipeline: str, device: torch.device) -> str:
    """``auto`` means ``device`` on CUDA and ``threads`` elsewhere."""
    if pipeline == "auto":
        return "device" if device.type == "cuda" else "threads"
    return pipeline


def make_feeder(
    regions: RegionSet,
    batches,
    warp: Warp,
    device: torch.device,
    pipeline: str = "auto",
    workers: int = 2,
    store: ImageStore | None = None,
):
    """Normalized batches of ``regions`` on ``device``, one per entry of ``batches`` (lists
    of region indices), through the GPU-resident path or a CPU one (``pipeline``);
    ``workers`` are warping threads or loader processes."""
    store = store if store is not None else ImageStore.of(regions, 2 * workers or 2)
    pipeline = pipeline_for(pipeline, device)
    if pipeline == "device":
        images = DeviceImages(
            store, device, warp.mean, warp.std, device_images_dtype(store, device)
        )
        return DeviceFeeder(regions, images, batches, warp.size, warp.pad)
    if pipeline == "threads":
        return ThreadFeeder(
            regions, store, batches, warp.size, warp.pad, device, warp.mean, warp.std, workers
        )
    dataset = RegionDataset(regions, store, warp.size, warp.pad, mean_fill(warp.mean))
    options = loader_options(workers, pin_memory=device.type == "cuda")
    return LoaderFeeder(DataLoader(dataset, batch_sampler=batches, **options), device,
                        warp.mean, warp.std)  # fmt: skip


class LoaderFeeder:
    """Normalized device batches from a DataLoader of uint8 regions."""

    def __init__(self, loader: DataLoader, device: torch.device, mean, std):
        self.loader, self.device, self.mean, self.std = loader, device, mean, std

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate()

    def iterate(self, flips: torch.Generator | None = None):
        for images, labels in self.loader:
            images = normalize(images.to(self.device, non_blocking=True), self.mean, self.std)
            if flips is not None:
                images = random_flip(images, flips)
            yield images, labels.to(self.device, non_blocking=True)


_normalizing = threading.Lock()


class NormalizedImages(list):
    """The float32 views of one normalization of a store (a list that can be weakly held)."""


def normalized_images(store: ImageStore, mean, std) -> list[np.ndarray]:
    """Every image of ``store``, normalized once: float32 ``[H, W, 3]`` views of one array.

    Four times the bytes of the uint8 store, and the CPU path's biggest saving: a region is
    then cut and resized straight into its batch slot, already normalized, in one pass, where
    a uint8 warp needs a second pass to convert and normalize. Context outside an image is 0,
    exactly the mean colour. The feeders of one store alive at the same time (the positives'
    and the negatives' of the SVM stage) share one copy instead of each making its own; it is
    freed with the last of them.
    """
    key = (tuple(map(float, mean)), tuple(map(float, std)))
    with _normalizing:
        views = store.normalized.get(key)
        if views is None:
            lut = normalization_table(mean, std)
            flat = np.empty(int(store.offsets[-1]), np.float32)
            views = NormalizedImages()
            for i in range(len(store)):
                image = store.image(i)
                view = flat[store.offsets[i] : store.offsets[i + 1]].reshape(image.shape)
                views.append(cv2.LUT(image, lut, dst=view))
            store.normalized[key] = views
    return views


class ThreadFeeder:
    """Normalized device batches warped by a pool of threads straight into batch buffers.

    OpenCV releases the GIL while it works, so threads run in parallel without the copies of
    process workers. Images are normalized once (:func:`normalized_images`); each region is
    then cut, resized and, when drawn, mirrored in place in its slot of a ``[B, S, S, 3]``
    float32 buffer: already the channels_last layout convolutions prefer. The next batch is
    prepared in the background while the current one is used.

    Normalized images take four times the memory of the decoded ones. When they would take more
    than :func:`float_images_budget` (a fifth of the machine's memory), regions are warped from
    the uint8 images instead and normalized by a lookup table: a second pass, about 30%
    slower, the same values up to uint8 rounding (``float_images`` forces either way).

    On the CPU, batch buffers are recycled once nothing refers to a batch any more (the
    training loop drops each batch before asking for the one after next): a fresh 80 MB
    buffer per batch costs more in page faults than the warping itself. A batch the caller
    keeps is never overwritten. Feeding a GPU, buffers are pinned, which makes the copy
    asynchronous; torch's pinned-memory cache recycles them once their copies are done.
    """

    pool_size = 3  # the batch in use, the one being filled, and the one made ahead

    def __init__(
        self,
        regions: RegionSet,
        store: ImageStore,
        batches: Iterable,
        size: int,
        pad: int,
        device: torch.device,
        mean,
        std,
        threads: int = 0,
        float_images: bool | None = None,
    ):
        if device.type == "cuda" and device.index is None:
            # Copies start in a background thread, whose current device may differ.
            device = torch.device("cuda", torch.cuda.current_device())
        if float_images is None:
            float_images = 4 * store.data.numel() <= float_images_budget()
            if not float_images:
                logger.info("normalized images would not fit in memory: warping uint8 ones")
        if float_images:
            self.views = normalized_images(store, mean, std)
            self.lut, self.fill = None, (0, 0, 0)  # zero: exactly the mean colour
        else:
            self.views = [store.image(i) for i in range(len(store))]
            self.lut, self.fill = normalization_table(mean, std), mean_fill(mean)
        self.regions, self.batches = regions, batches
        self.size, self.pad, self.device = size, pad, device
        self.threads = threads or os.cpu_count() or 1
        self.pin = device.type == "cuda"

    def __len__(self) -> int:
        return len(self.batches)

    def _warp_rows(self, images: list, boxes: list, flip: list, rows: range, out) -> None:
        size, image_at, lut, fill = self.size, self.views, self.lut, self.fill
        if lut is not None:
            scratch = np.empty((size, size, 3), np.uint8)
        for row in rows:  # the GIL is held only between OpenCV calls: keep this loop bare
            region = out[row] if lut is None else scratch
            warp_box(image_at[images[row]], *boxes[row], size, fill, region)
            if flip[row]:
                cv2.flip(region, 1, dst=region)
            if lut is not None:
                cv2.LUT(region, lut, dst=out[row])

    def _buffer(self, n: int, buffers: list[torch.Tensor]) -> torch.Tensor:
        """A buffer for ``n`` regions: a free one of ``buffers`` or a new one put among them."""
        shape = (n, self.size, self.size, 3)
        if self.pin:
            return torch.empty(shape, dtype=torch.float32, pin_memory=True)
        free = [buffer for buffer in buffers if not shared(buffer)]
        for buffer in free:
            if buffer.shape == shape:
                return buffer
        buffer = torch.empty(shape, dtype=torch.float32)
        if len(buffers) == self.pool_size:
            # A free one of another size, else the oldest, whose batch the caller keeps.
            evicted = free[0] if free else buffers[0]
            buffers[:] = [kept for kept in buffers if kept is not evicted]
        buffers.append(buffer)
        return buffer

    def _warp(self, index: np.ndarray, flip: np.ndarray, pool, buffers):
        buffer = self._buffer(len(index), buffers)
        step = -(-len(index) // self.threads)
        parts = [range(i, min(i + step, len(index))) for i in range(0, len(index), step)]
        out = buffer.numpy()
        images = self.regions.image_index[index].tolist()
        boxes = np.round(context_boxes(self.regions.boxes[index], self.size, self.pad))
        boxes = boxes.astype(np.int64).tolist()
        flip = flip.tolist()
        list(pool.map(lambda rows: self._warp_rows(images, boxes, flip, rows, out), parts))
        images = buffer.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # NHWC memory
        labels = torch.from_numpy(self.regions.labels[index].astype(np.int64))
        return images, labels.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate()

    def iterate(self, flips: torch.Generator | None = None):
        buffers: list[torch.Tensor] = []  # this pass's own: passes never share buffers
        with ThreadPoolExecutor(self.threads) as pool, ThreadPoolExecutor(1) as ahead:
            pending = None
            for batch in self.batches:
                index = np.asarray(batch)
                n = len(index)
                # Drawn here, in batch order, whatever thread warps the batch.
                flip = draw_flips(n, flips).numpy() if flips is not None else np.zeros(n, bool)
                job = ahead.submit(self._warp, index, flip, pool, buffers)
                if pending is not None:
                    yield pending.result()
                pending = job
            if pending is not None:
                yield pending.result()


def float_images_budget() -> int:
    """Bytes the normalized images of one image store may take: a fifth of physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 5
    except (ValueError, OSError, AttributeError):  # no sysconf: assume 16 GB
        return 16 * 2**30 // 5


def normalization_table(mean, std) -> np.ndarray:
    """``[256, 1, 3]`` float32 ``(v / 255 - mean) / std`` for every uint8 value ``v`` and
    channel: :func:`cv2.LUT` normalizes a region with it in one pass, computed in float64."""
    values = np.arange(256, dtype=np.float64).reshape(256, 1, 1) / 255
    mean = np.asarray(mean, np.float64).reshape(1, 1, 3)
    std = np.asarray(std, np.float64).reshape(1, 1, 3)
    return ((values - mean) / std).astype(np.float32)


def shared(tensor: torch.Tensor) -> bool:
    """Whether any other tensor refers to ``tensor``'s memory (a view such as a batch handed
    out, or a tensor an autograd graph saved). Not seen: a caller holding only the batch's
    ``untyped_storage()`` object, which torch shares with ``tensor``. Without torch's use
    count, everything counts as shared: batch buffers are then never recycled."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        _warn_no_use_count()
        return True
    storage = tensor.untyped_storage()  # one reference of its own while it lives
    return use_count(storage._cdata) > 2


@functools.cache
def _warn_no_use_count() -> None:
    logger.warning(
        "this torch has no storage use count: batch buffers are not recycled (slower, not wrong)"
    )


class DeviceImages:
    """Every image of a store on ``device``, normalized, zero-padded past the largest size.

    Args:
        store: decoded RGB images.
        device: where to keep them.
        mean, std: normalization; padding is 0, i.e. the mean colour.
        dtype: float16/bfloat16 halve the memory on GPUs; float32 on the CPU.
    """

    def __init__(self, store: ImageStore, device, mean, std, dtype=torch.float32):
        # One row and column of padding past the largest image: roi_align clamps a sample
        # beyond the tensor's last pixel to that pixel, so without it a region at the border
        # of the largest image would read its edge where others read the (zero) padding, and
        # its warp would depend on which images share the tensor.
        height, width = (int(v) + 1 for v in store.shapes.max(axis=0))
        self.tensor = torch.zeros(len(store), 3, height, width, dtype=dtype, device=device)
        for i in range(len(store)):
            image = torch.from_numpy(store.image(i)).to(device).permute(2, 0, 1).unsqueeze(0)
            h, w = store.shapes[i]
            self.tensor[i, :, :h, :w] = normalize(image, mean, std)[0].to(dtype)

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()


def device_images_dtype(store: ImageStore, device: torch.device) -> torch.dtype:
    """float32 where the normalized images take at most a quarter of the GPU's memory (all of
    VOC2007 trainval takes about 11 GB), else float16, which also rounds the warp's sampling
    coordinates to half precision. Always float32 on the CPU."""
    if device.type != "cuda":
        return torch.float32
    height, width = (int(v) for v in store.shapes.max(axis=0))
    need = 4 * 3 * height * width * len(store)
    if need <= torch.cuda.get_device_properties(device).total_memory // 4:
        return torch.float32
    logger.info("normalized float32 images would take %.1f GB: keeping float16", need / 1e9)
    return torch.float16


def region_rois(image_index, boxes, size: int, pad: int) -> torch.Tensor:
    """``[B, 5]`` float rois ``(image, x1, y1, x2, y2)``, enlarged for context as in
    :func:`rcnn.data.warps.context_box` and rounded the same way."""
    boxes = boxes.double()
    if pad:
        scale = size / (size - 2 * pad)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
        boxes = torch.round(torch.cat([centre - half, centre + half], dim=1))
    return torch.cat([image_index.double().unsqueeze(1), boxes], dim=1)


def warp_regions(images: DeviceImages, image_index, boxes, size: int, pad: int = 0):
    """Warps a batch of boxes of ``images`` to ``[B, 3, size, size]`` in one call."""
    device = images.tensor.device
    rois = region_rois(image_index.to(device), boxes.to(device), size, pad)
    from torchvision.ops import roi_align  # here: importing it costs seconds (torch._dynamo)

    out = roi_align(
        images.tensor,
        rois.to(images.tensor.dtype),
        output_size=size,
        spatial_scale=1.0,
        sampling_ratio=1,
        aligned=True,
    )
    return out.float()


class DeviceFeeder:
    """Normalized device batches warped on the device from :class:`DeviceImages`.

    Args:
        regions: the region set.
        images: its images on the device.
        batches: lists of region indices (a batch sampler, or fixed chunks for validation).
        size, pad: warp size and context padding.
    """

    def __init__(
        self, regions: RegionSet, images: DeviceImages, batches: Iterable, size: int, pad: int = 0
    ):
        device = images.tensor.device
        self.images, self.batches, self.size, self.pad = images, batches, size, pad
        self.image_index = torch.from_numpy(regions.image_index.astype(np.int64)).to(device)
        self.boxes = torch.from_numpy(regions.boxes).to(device)
        self.labels = torch.from_numpy(regions.labels.astype(np.int64)).to(device)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate()

    def iterate(self, flips: torch.Generator | None = None):
        batches = [np.asarray(batch, dtype=np.int64) for batch in self.batches]
        sizes = [len(batch) for batch in batches]
        if not batches:
            return
        # One upload per pass: a blocking copy from host memory waits for the GPU to drain its
        # queue, so one per batch would stall the GPU at every step (a CPU-GPU sync point).
        device = self.image_index.device
        index = torch.from_numpy(np.concatenate(batches)).to(device).split(sizes)
        flip = [None] * len(sizes)
        if flips is not None:  # drawn batch by batch, as every path draws them
            flip = torch.cat([draw_flips(n, flips) for n in sizes]).to(device).split(sizes)
        for batch, mirror in zip(index, flip, strict=True):
            warped = warp_regions(
                self.images, self.image_index[batch], self.boxes[batch], self.size, self.pad
            )
            if mirror is not None:
                warped = torch.where(mirror.view(-1, 1, 1, 1), warped.flip(-1), warped)
            yield warped, self.labels[batch]


def chunks(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Fixed, ordered batches for validation."""
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def image_batches(counts, batch_size: int) -> list[np.ndarray]:
    """Ordered batches of the regions of consecutive images (``counts[i]`` regions of image
    ``i``), none holding two images' regions: an image's batches are then the same whatever
    images are scored with it (alone, in a chunk, or on another torchrun process), and so
    are its scores, bit for bit. A CPU's kernels may round a row differently in a batch of
    another size or composition."""
    stops = np.cumsum(counts, dtype=np.int64)
    starts = stops - np.asarray(counts, dtype=np.int64)
    return [
        np.arange(s, min(s + batch_size, stop))
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True)
        for s in range(start, stop, batch_size)
    ]
