"""``rcnn features``: fc7 (and pool5) features of every region of a prepared dataset.

Regions are warped by the training paths (no flip), pushed through the fine-tuned network in
eval mode in large batches, and their features written as float16 chunks of a feature store
(:mod:`rcnn.data.feature_store`). A killed run resumes with the missing chunks.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from rcnn.data.dataset import ImageStore
from rcnn.data.feature_store import (
    FeatureStoreError,
    chunk_path,
    num_chunks,
    read_meta,
    write_chunk,
    write_meta,
)
from rcnn.files import output_dir, output_lock, remove_temporaries
from rcnn.modeling.config import FeaturesConfig
from rcnn.progress import progress_bar

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
    from rcnn.runtime.distributed import init_world, shutdown

    world, device = init_world(cfg.inference.device)
    cfg = replace(cfg, inference=replace(cfg.inference, device=device))
    try:
        return _run_features(cfg, world)
    finally:
        shutdown()


def _run_features(cfg: FeaturesConfig, world) -> dict | None:
    import contextlib

    import torch

    from rcnn.data.batches import make_feeder
    from rcnn.data.regions import load_split
    from rcnn.modeling.checkpoint import load_model
    from rcnn.modeling.features import feature_dims, forward_features
    from rcnn.runtime.device import autocast, precision_name
    from rcnn.runtime.distributed import broadcast, everywhere, rank_zero_first
    from rcnn.runtime.shared import SharedWork, run_on_main

    def load():
        return load_model(cfg.model), {split: load_split(cfg.data, split) for split in cfg.splits}

    loaded, splits = everywhere(world, load, "rcnn features")
    root = Path(cfg.out)
    with contextlib.ExitStack() as stack:
        decided: dict = {}

        def claim() -> None:  # rank 0 holds the store while the run lasts
            output_dir(root)
            stack.enter_context(output_lock(root, "rcnn features"))
            previous = None if cfg.overwrite else read_meta(root)
            inference = cfg.inference
            if inference.amp is None and previous is not None:  # automatic: the store's own
                inference = replace(inference, amp=previous["precision"] != "float32")
            decided["inference"] = inference

        rank_zero_first(world, claim)
        inference = broadcast(decided.get("inference"))
        inference = replace(inference, device=cfg.inference.device)  # this process's own
        device, inference, model = loaded.for_inference(inference)
        dims = {name: feature_dims(model)[name] for name in cfg.layers}
        made = {"precision": precision_name(device, inference.amp), "device": device.type}
        images: dict[str, ImageStore] = {}

        def feeder(split: str, batches: list[np.ndarray]):
            regions = splits[split]
            if split not in images:  # decoded once, at the first batch of the split
                images[split] = ImageStore.of(regions, inference.threads)
            store = images[split]
            batches = make_feeder(regions, batches, loaded.spec.warp(), device,
                                  workers=inference.threads, store=store)  # fmt: skip
            return forward_features(
                model, batches, cfg.layers, lambda: autocast(device, inference.amp)
            )

        def compute(split: str, batches: list[np.ndarray]) -> list[dict]:  # a process's share
            return [
                {name: value.cpu().numpy() for name, value in features.items()}
                for _, features in feeder(split, batches)
            ]

        shared = SharedWork(world, compute)

        def stage() -> dict:
            meta = _claim(root, cfg, loaded, made, dims, splits)
            summary = {"bytes_per_region": 2 * sum(dims.values()), "splits": {}, **made}
            for split, regions in splits.items():
                size = summary["bytes_per_region"] * len(regions)
                logger.info(
                    "%s: %d regions x %d bytes (float16 %s) = %.1f MB",
                    split,
                    len(regions),
                    summary["bytes_per_region"],
                    " + ".join(f"{n} {d}" for n, d in dims.items()),
                    size / 1e6,
                )
                for name in cfg.layers:
                    remove_temporaries(root / split / name)
                todo = [
                    c
                    for c in range(num_chunks(len(regions), meta["chunk"]))
                    if not all(chunk_path(root, split, n, c).is_file() for n in cfg.layers)
                ]
                batches = _batches(todo, len(regions), meta["chunk"], inference.batch)
                if batches:
                    if world.enabled:
                        outputs = (
                            (None, {n: torch.from_numpy(v) for n, v in found.items()})
                            for found in shared.map(split, batches)
                        )
                    else:
                        outputs = feeder(split, batches)
                    _write_chunks(root, split, cfg.layers, todo, len(regions), meta["chunk"],
                                  outputs, progress_bar(total=sum(len(b) for b in batches),
                                                        enabled=cfg.progress,
                                                        desc=f"features {split}",
                                                        unit="region"))  # fmt: skip
                summary["splits"][split] = {"regions": len(regions), "chunks_computed": len(todo)}
            summary.update(out=str(root), layers=dims)
            return summary

        return run_on_main(shared, stage)


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
                _, features = next(outputs)
                for name in layers:
                    parts[name].append(features[name].cpu().numpy())
                got += len(parts[layers[0]][-1])
                bar.update(len(parts[layers[0]][-1]))
            for name in layers:
                write_chunk(root, split, name, c, np.concatenate(parts[name]))
