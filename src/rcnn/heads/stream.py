"""Features computed when they are needed: what a feature store holds, without the store.

At VOC2007's size a feature store of every region is 40-80 GB of fc7 (and 130-270 GB with
pool5); the SVM and box-regression stages need far less at any moment: a pass over the
regions for mining, the positives, a cache of hard negatives, the regions a regressor trains
on. :class:`FeatureStream` computes features for the regions asked, batch by batch on the
device, rounded to float16 as a store keeps them, so both sources give the same numbers up to
the order of floating-point sums. Both offer the same two calls, used by
:mod:`rcnn.heads.svm` and :mod:`rcnn.heads.bbox_regression`::

    source.stream(indices)  # (indices, float32 [B, D]) a block at a time, in order
    source.rows(indices)    # float32 [len(indices), D] at once
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from rcnn.data.feeders import chunks, make_feeder
from rcnn.data.regions import RegionSet
from rcnn.data.warps import ImageStore
from rcnn.modeling.checkpoint import LoadedModel
from rcnn.modeling.features import feature_dims, forward_features
from rcnn.progress import progress_bar
from rcnn.runtime.config import InferenceConfig
from rcnn.runtime.device import autocast, precision_name


class FeatureStream:
    """Features of the regions of ``regions``, computed by ``loaded`` when asked: of one layer
    (``layer``; :meth:`stream` and :meth:`rows`), or of several from one forward pass
    (``layers``; :meth:`stream_layers` and :meth:`rows_layers`).

    The images are decoded once, when the stream is made (their bytes are in
    :attr:`image_bytes`); nothing is written to disk.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        regions: RegionSet,
        layer: str,
        inference: InferenceConfig,
        progress: bool = False,
        layers: tuple[str, ...] | None = None,
    ):
        self.device, self.inference, self.model = loaded.for_inference(inference)
        self.warp = loaded.spec.warp()
        self.regions, self.layer, self.progress = regions, layer, progress
        self.layers = tuple(layers or (layer,))
        self.dims = {name: feature_dims(self.model)[name] for name in self.layers}
        self.dim = self.dims[layer]
        self.store = ImageStore.of(regions, self.inference.threads)
        self.computed = 0  # regions pushed through the network so far
        self.precision = precision_name(self.device, self.inference.amp)
        self.shared = None  # a rcnn.runtime.shared.SharedWork under torchrun

    def __len__(self) -> int:
        return len(self.regions)

    @property
    def image_bytes(self) -> int:
        return self.store.data.numel()

    def stream(self, indices, desc: str = "features") -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(indices of a batch, their float32 [B, D] features)``, batch by batch in order.
        Under torchrun (:attr:`shared` set) the batches are computed by every process."""
        for batch, found in self.stream_layers(indices, desc):
            yield batch, found[self.layer]

    def stream_layers(self, indices, desc: str = "features") -> Iterator[tuple[np.ndarray, dict]]:
        """``(indices of a batch, {layer: float32 [B, D]})`` of every layer, in order."""
        indices = np.asarray(indices, dtype=np.int64)
        batches = chunks(indices, self.inference.batch)
        if not batches:
            return
        if self.shared is not None:
            outputs = self.shared.map("features", batches)
        else:
            outputs = ahead(self._forward(batches))
        bar = progress_bar(total=len(indices), enabled=self.progress, desc=desc, unit="region")
        with bar:
            for batch, found in zip(batches, outputs, strict=True):
                self.computed += len(batch)
                bar.update(len(batch))
                yield batch, found

    def compute(self, _key, batches: list[np.ndarray]) -> list[dict]:
        """The float32 features of each batch (a process's share for :attr:`shared`)."""
        return list(self._forward([np.asarray(b, dtype=np.int64) for b in batches]))

    def _forward(self, batches: list[np.ndarray]) -> Iterator[dict]:
        feeder = make_feeder(self.regions, batches, self.warp, self.device,
                             workers=self.inference.threads, store=self.store)  # fmt: skip
        outputs = forward_features(
            self.model, feeder, self.layers, lambda: autocast(self.device, self.inference.amp)
        )
        for _, features in outputs:
            # float16, as a feature store keeps them: both sources give the same numbers.
            yield {n: features[n].to("cpu", torch.float32).numpy() for n in self.layers}

    def rows(self, indices) -> np.ndarray:
        """float32 ``[len(indices), D]`` features of the given regions, in the given order."""
        return self.rows_layers(indices)[self.layer]

    def rows_layers(self, indices) -> dict[str, np.ndarray]:
        """``{layer: float32 [len(indices), D]}`` of the given regions, in the given order."""
        parts = [found for _, found in self.stream_layers(indices)]
        return {
            name: np.concatenate([p[name] for p in parts])
            if parts
            else np.zeros((0, dim), np.float32)
            for name, dim in self.dims.items()
        }


def ahead(items: Iterator, depth: int = 8) -> Iterator:
    """``items``, computed in a thread up to ``depth`` ahead of the caller: the network works
    on the next batches while the caller uses the last (torch and numpy release the GIL)."""
    import queue
    import threading

    done = object()
    box: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                box.put(item)
        except BaseException as err:  # handed to the caller
            box.put(err)
            return
        box.put(done)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (item := box.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let a blocked put finish
            try:
                box.get_nowait()
            except queue.Empty:
                thread.join(0.01)
