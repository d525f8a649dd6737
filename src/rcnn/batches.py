"""Batch feeders: where normalized ``[B, 3, S, S]`` region batches on the device come from.

Three paths produce the same batches:

* :class:`ThreadFeeder` (CPU path, the default without CUDA): threads cut and resize uint8
  regions with OpenCV from the image store straight into one batch buffer, a batch ahead.
* :class:`LoaderFeeder`: the same warp in DataLoader worker processes that map the shared
  image store; the batch is moved to the device and normalized there.
* :class:`DeviceFeeder` (GPU path, the default on CUDA): every image is uploaded once,
  normalized, into one padded tensor; each batch is warped at once with
  ``torchvision.ops.roi_align`` (``aligned=True``, one sample per output pixel, which is
  bilinear resizing with OpenCV's pixel-centre convention). No workers, no per-region Python.

Both pad context outside the image with the normalization mean (zero after normalizing), and
both leave the random flip to the training loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.ops import roi_align

from rcnn.dataset import ImageStore, mean_fill, normalize, warp_region
from rcnn.regions import RegionSet


class LoaderFeeder:
    """Normalized device batches from a DataLoader of uint8 regions."""

    def __init__(self, loader: DataLoader, device: torch.device, mean, std):
        self.loader, self.device, self.mean, self.std = loader, device, mean, std

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            yield normalize(images, self.mean, self.std), labels.to(self.device, non_blocking=True)


class ThreadFeeder:
    """Normalized device batches warped by a pool of threads straight into one batch buffer.

    OpenCV releases the GIL while it works, so threads run in parallel without the copies of
    process workers. Each region is resized as uint8 and normalized to float32 right away,
    while it is still in cache, directly into its slot of one ``[B, S, S, 3]`` buffer: already
    the channels_last layout convolutions prefer. The next batch is prepared in the background
    while the current one is used; pinned memory makes its copy to a GPU asynchronous.
    """

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
    ):
        self.regions, self.store, self.batches = regions, store, batches
        self.size, self.pad, self.device = size, pad, device
        self.fill = mean_fill(mean)
        # (x - 255 mean) * 1 / (255 std), as OpenCV scalars (4 channels, the last unused).
        self.shift = (*(255.0 * m for m in mean), 0.0)
        self.scale = (*(1.0 / (255.0 * s) for s in std), 1.0)
        self.threads = threads or os.cpu_count() or 1
        self.pin = device.type == "cuda"

    def __len__(self) -> int:
        return len(self.batches)

    def _warp_rows(self, index: np.ndarray, rows: range, out: np.ndarray) -> None:
        regions, store = self.regions, self.store
        scratch = np.empty((self.size, self.size, 3), np.uint8)
        for row in rows:
            i = index[row]
            image = store.image(regions.image_index[i])
            warp_region(image, regions.boxes[i], self.size, self.pad, self.fill, scratch)
            cv2.subtract(scratch, self.shift, dst=out[row], dtype=cv2.CV_32F)
            cv2.multiply(out[row], self.scale, dst=out[row])

    def _warp(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (len(index), self.size, self.size, 3)
        buffer = torch.empty(shape, dtype=torch.float32, pin_memory=self.pin)
        step = -(-len(index) // self.threads)
        parts = [range(i, min(i + step, len(index))) for i in range(0, len(index), step)]
        out = buffer.numpy()
        list(self.pool.map(lambda rows: self._warp_rows(index, rows, out), parts))
        return buffer, torch.from_numpy(self.regions.labels[index].astype(np.int64))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        with ThreadPoolExecutor(self.threads) as self.pool, ThreadPoolExecutor(1) as ahead:
            pending = None
            for batch in self.batches:
                job = ahead.submit(self._warp, np.asarray(batch))
                if pending is not None:
                    yield self._to_device(*pending.result())
                pending = job
            if pending is not None:
                yield self._to_device(*pending.result())

    def _to_device(self, buffer: torch.Tensor, labels: torch.Tensor):
        images = buffer.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # NHWC memory
        return images, labels.to(self.device, non_blocking=True)


class DeviceImages:
    """Every image of a store on ``device``, normalized, zero-padded to the largest size.

    Args:
        store: decoded RGB images.
        device: where to keep them.
        mean, std: normalization; padding is 0, i.e. the mean colour.
        dtype: float16/bfloat16 halve the memory on GPUs; float32 on the CPU.
    """

    def __init__(self, store: ImageStore, device, mean, std, dtype=torch.float32):
        height, width = (int(v) for v in store.shapes.max(axis=0))
        self.tensor = torch.zeros(len(store), 3, height, width, dtype=dtype, device=device)
        for i in range(len(store)):
            image = torch.from_numpy(store.image(i)).to(device).permute(2, 0, 1).unsqueeze(0)
            h, w = store.shapes[i]
            self.tensor[i, :, :h, :w] = normalize(image, mean, std)[0].to(dtype)

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()


def region_rois(image_index, boxes, size: int, pad: int) -> torch.Tensor:
    """``[B, 5]`` float rois ``(image, x1, y1, x2, y2)``, enlarged for context as in
    :func:`rcnn.dataset.context_box` and rounded the same way."""
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
        for batch in self.batches:
            index = torch.as_tensor(batch, device=self.image_index.device)
            warped = warp_regions(
                self.images, self.image_index[index], self.boxes[index], self.size, self.pad
            )
            yield warped, self.labels[index]


def chunks(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Fixed, ordered batches for validation."""
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
