"""``rcnn features``: fc7 (and pool5) features of every region of a prepared dataset.

Regions are warped by the training paths (no flip), pushed through the fine-tuned network in
eval mode in large batches, and their features written as float16 chunks of a feature store
(:mod:`rcnn.heads.feature_store`). A killed run resumes with the missing chunks.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from rcnn.data.warps import ImageStore
from rcnn.files import remove_temporaries
from rcnn.heads.config import FeaturesConfig
from rcnn.heads.feature_store import (
    FeatureStoreError,
    chunk_path,
    num_chunks,
    read_meta,
    write_chunk,
    write_meta,
)
from rcnn.progress import progress_bar
from rcnn.runtime.config import InferenceConfig
from rcnn.runtime.stage import run_stage

logger = logging.getLogger(__name__)


class StoreClash(FeatureStoreError):
    """A feature store holds features that new ones must not be mixed with."""

    def __init__(self, root: Path, clash: list[str]):
        self.root, self.clash = root, clash
        same_amp = " (or the same --amp/--no-amp)" if any("precision" in c for c in clash) else ""
        super().__init__(
            f"--out {root} holds features of another model or other regions, or made in "
            f"another way ({', '.join(clash)}); choose another --out or pass --overwrite" + same_amp
        )


def run_features(cfg: FeaturesConfig) -> dict | None:
    """Computes the missing feature chunks of every requested split; returns a summary.

    The precision (``cfg.inference.amp``) and the kind of device must be those the store's
    chunks were computed with; ``amp=None`` (automatic) adopts the store's precision. Under
    torchrun every process computes a share of the batches (:mod:`rcnn.runtime.shared`) and
    rank 0 alone writes (the others return ``None``); the store is that of one process.
    """
    from rcnn.runtime.shared import SharedWork, run_on_main

    with run_stage("rcnn features", cfg.inference.device, cfg) as stage:
        loaded, splits = stage.everywhere(lambda: _load(cfg))
        stage.agree(loaded.digest, f"the weights of {cfg.model}")
        stage.agree({s: r.info.get("generation") for s, r in splits.items()}, "region stores")
        inference = _claim_store(stage, cfg)
        extractor = Extractor(loaded, splits, cfg.layers, inference)
        shared = SharedWork(stage.world, extractor.compute)
        extractor.shared = shared if stage.world.enabled else None
        return run_on_main(shared, lambda: _extract(cfg, loaded, splits, extractor))


def _load(cfg: FeaturesConfig):
    from rcnn.data.regions import load_split
    from rcnn.modeling.checkpoint import load_model

    return load_model(cfg.model), {split: load_split(cfg.data, split) for split in cfg.splits}


def _claim_store(stage, cfg: FeaturesConfig) -> InferenceConfig:
    """Rank 0 takes the store; every rank gets the inference settings, with an automatic
    precision decided as the store's own."""
    from rcnn.runtime.distributed import broadcast

    decided: dict = {}

    def check(out: Path) -> None:
        previous = None if cfg.overwrite else read_meta(out)
        inference = cfg.inference
        if inference.amp is None and previous is not None:
            inference = replace(inference, amp=previous["precision"] != "float32")
        decided["inference"] = inference

    stage.claim(cfg.out, check)
    inference = broadcast(decided.get("inference"))
    return replace(inference, device=stage.device)  # this process's own


class Extractor:
    """The features of batches of a split's regions, on this process's device; under
    torchrun (:attr:`shared` set) every process computes its share of each request."""

    def __init__(self, loaded, splits: dict, layers: list[str], inference: InferenceConfig):
        from rcnn.modeling.features import feature_dims
        from rcnn.runtime.device import precision_name

        self.loaded, self.splits, self.layers = loaded, splits, layers
        self.device, self.inference, self.model = loaded.for_inference(inference)
        self.dims = {name: feature_dims(self.model)[name] for name in layers}
        self.made = {"precision": precision_name(self.device, self.inference.amp),
                     "device": self.device.type}  # fmt: skip
        self.images: dict[str, ImageStore] = {}  # decoded once, at a split's first batch
        self.shared = None

    def compute(self, split: str, batches: list[np.ndarray]) -> list[dict]:
        """Per batch, ``{layer: float16 [B, D]}`` on the CPU (a process's share)."""
        return list(self._forward(split, batches))

    def outputs(self, split: str, batches: list[np.ndarray]):
        """The features of every batch, in order (every process computing under torchrun)."""
        if self.shared is not None:
            return self.shared.map(split, batches)
        return self._forward(split, batches)

    def _forward(self, split: str, batches: list[np.ndarray]):
        from rcnn.data.feeders import make_feeder
        from rcnn.modeling.features import forward_features

        regions = self.splits[split]
        if split not in self.images:
            self.images[split] = ImageStore.of(regions, self.inference.threads)
        feeder = make_feeder(regions, batches, self.loaded.spec.warp(), self.device,
                             workers=self.inference.threads, store=self.images[split])  # fmt: skip
        for _, features in forward_features(self.model, feeder, self.layers, self._autocast):
            yield {name: value.cpu().numpy() for name, value in features.items()}

    def _autocast(self):
        from rcnn.runtime.device import autocast

        return autocast(self.device, self.inference.amp)


def _extract(cfg: FeaturesConfig, loaded, splits: dict, extractor: Extractor) -> dict:
    """Rank 0's part: the store's ``meta.json``, then the missing chunks of every split."""
    root, dims = Path(cfg.out), extractor.dims
    meta = _claim(root, cfg, loaded, extractor.made, dims, splits)
    summary = {"bytes_per_region": 2 * sum(dims.values()), "splits": {}, **extractor.made}
    for split, regions in splits.items():
        logger.info("%s: %d regions x %d bytes (float16 %s) = %.1f MB", split, len(regions),
                    summary["bytes_per_region"], " + ".join(f"{n} {d}" for n, d in dims.items()),
                    summary["bytes_per_region"] * len(regions) / 1e6)  # fmt: skip
        for name in cfg.layers:
            remove_temporaries(root / split / name)
        todo = [
            c
            for c in range(num_chunks(len(regions), meta["chunk"]))
            if not all(chunk_path(root, split, n, c).is_file() for n in cfg.layers)
        ]
        batches = _batches(todo, len(regions), meta["chunk"], extractor.inference.batch)
        if batches:
            bar = progress_bar(total=sum(len(b) for b in batches), enabled=cfg.progress,
                               desc=f"features {split}", unit="region")  # fmt: skip
            outputs = extractor.outputs(split, batches)
            _write_chunks(root, split, cfg.layers, todo, len(regions), meta["chunk"], outputs, bar)
        summary["splits"][split] = {"regions": len(regions), "chunks_computed": len(todo)}
    summary.update(out=str(root), layers=dims)
    return summary


def _claim(root: Path, cfg: FeaturesConfig, loaded, made: dict, dims, splits) -> dict:
    """Writes (or checks) ``meta.json``: features of another model or other regions, or
    computed in another precision or on another kind of device, are refused unless
    ``overwrite``; new layers and splits are added."""
    model = loaded.record()
    described = {
        split: {
            "regions": len(regions),
            "generation": regions.info.get("generation"),
            "store": str((Path(cfg.data) / split).resolve()),
        }
        for split, regions in splits.items()
    }
    meta = read_meta(root)
    if meta is not None:
        clash = [k for k in model if k != "path" and meta["model"].get(k) != model[k]]
        clash += [f"{k} {meta[k]}, not {v}" for k, v in made.items() if meta[k] != v]
        same = ("regions", "generation")  # the store's path is a record: a copy is the same
        clash += [
            s
            for s, d in described.items()
            if s in meta["splits"] and any(meta["splits"][s].get(k) != d[k] for k in same)
        ]
        if clash and not cfg.overwrite:
            raise StoreClash(root, clash)
        if clash:
            for split in meta["splits"]:
                shutil.rmtree(root / split, ignore_errors=True)
            meta = None
    meta = meta or {"model": model, **made, "layers": {}, "splits": {}, "chunk": cfg.chunk}
    meta["layers"] = {**meta["layers"], **dims}
    meta["splits"] = {**meta["splits"], **described}
    write_meta(root, meta)
    return read_meta(root)


def _batches(todo: list[int], num_regions: int, chunk: int, batch: int) -> list[np.ndarray]:
    """Region index batches covering the chunks still to do, none crossing a chunk boundary."""
    out = []
    for c in todo:
        stop = min((c + 1) * chunk, num_regions)
        out += [np.arange(s, min(s + batch, stop)) for s in range(c * chunk, stop, batch)]
    return out


def _write_chunks(root, split, layers, todo, num_regions, chunk, outputs, bar) -> None:
    with bar:
        for c in todo:
            need = min((c + 1) * chunk, num_regions) - c * chunk
            parts: dict[str, list] = {name: [] for name in layers}
            got = 0
            while got < need:
                features = next(outputs)
                for name in layers:
                    parts[name].append(features[name])
                got += len(parts[layers[0]][-1])
                bar.update(len(parts[layers[0]][-1]))
            for name in layers:
                write_chunk(root, split, name, c, np.concatenate(parts[name]))
