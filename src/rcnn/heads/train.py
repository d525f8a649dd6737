"""``rcnn train-svm`` and ``rcnn train-bbox``: R-CNN's heads on a fine-tuned network's features.

Both take the features of the training regions from a feature store when one is given
(``--features``; the missing ones are computed into it first) or when ``RUN/features`` holds
them already; otherwise they compute them on the fly (:class:`rcnn.heads.stream.
FeatureStream`): the SVMs in one pass over the negatives, holding only the positives and the
hard-negative caches, the box regressors only for the regions they train on. No feature store
is written then: disk use is that of the outputs. Both write their model to ``RUN/svm`` or
``RUN/bbox`` (or ``--out``).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import replace
from pathlib import Path

from rcnn.data.annotations import class_key
from rcnn.errors import RcnnError
from rcnn.files import atomic_write_bytes
from rcnn.heads.bbox_regression import train_bbox
from rcnn.heads.config import BBoxConfig, FeaturesConfig, HeadConfig, SVMConfig, run_part
from rcnn.heads.extract import StoreClash, run_features
from rcnn.heads.feature_store import FeatureStore, FeatureStoreError, read_meta
from rcnn.heads.mining import train_layer_svms, train_svms
from rcnn.heads.stream import FeatureStream
from rcnn.heads.svm import SVMModel
from rcnn.modeling.config import LAYERS
from rcnn.runtime.stage import run_stage

logger = logging.getLogger(__name__)


def head_inputs(cfg: HeadConfig, command: str) -> tuple:
    """The network and the regions of ``cfg.split``, checked for the heads (ground-truth boxes
    among them, the network's classes)."""
    from rcnn.data.regions import load_split
    from rcnn.modeling.checkpoint import load_model

    loaded = load_model(cfg.model)
    regions = load_split(cfg.data, cfg.split)
    regions.require_truth(command.removeprefix("rcnn "))
    labels = regions.info.get("labels", {})
    if labels.get("add_gt") and "background_images" not in labels:
        raise RcnnError(
            f"--data {cfg.data}: split '{cfg.split}' was prepared by an earlier `--preset paper` "
            "that left out the images without a chosen object, where the SVMs mine negatives "
            "too: run `rcnn prepare --preset paper` again (cached proposals are reused)"
        )
    if [class_key(c) for c in regions.classes] != [class_key(c) for c in loaded.classes]:
        raise RcnnError(
            f"--data {cfg.data}: its regions are of classes {regions.classes}, but "
            f"{cfg.model} was trained for {loaded.classes}: its SVMs and box regressors are "
            f"trained on regions of its own classes (`rcnn prepare --classes "
            f"{' '.join(loaded.classes)}`)"
        )
    return loaded, regions


def feature_source(cfg: HeadConfig, layer: str, world=None, command="rcnn train-svm") -> tuple:
    """The network, the regions of ``cfg.split`` and where their ``layer`` features come
    from: a feature store (``cfg.features``, completed first if needed, or a complete
    ``RUN/features``), else a stream that computes them when asked."""
    loaded, regions = head_inputs(cfg, command)
    if cfg.features:
        return loaded, regions, _store(cfg, layer, loaded, regions, Path(cfg.features), world)
    root = run_part(cfg.model, "features")
    try:
        meta = read_meta(root)
        if meta is not None and meta["model"].get("digest") == loaded.digest:
            store = FeatureStore(root, cfg.split, layer)
            store.check_regions(regions, cfg.data)
            logger.info("%s features from the feature store %s", layer, root)
            return loaded, regions, store
    except FeatureStoreError as err:
        logger.info("not using %s (%s)", root, err)
    logger.info("%s features computed on the fly (no feature store)", layer)
    stream = FeatureStream(loaded, regions, layer, cfg.inference, cfg.progress)
    return loaded, regions, stream


def _store(cfg: HeadConfig, layer: str, loaded, regions, root: Path, world=None) -> FeatureStore:
    """The store ``root``, with the missing features of ``cfg.split`` computed first (by
    `rcnn features` beforehand under torchrun)."""
    if root.exists() and not root.is_dir():
        raise FeatureStoreError(f"--features {root} is a file; give a feature store's folder")
    meta = read_meta(root)
    if meta is None and root.is_dir() and any(not p.name.startswith(".") for p in root.iterdir()):
        raise FeatureStoreError(
            f"--features {root} holds other files and no feature store: give a store of "
            "`rcnn features`, or a new folder to make one in"
        )
    if meta is not None and meta["model"].get("digest") != loaded.digest:
        raise FeatureStoreError(
            f"--features {root} holds features of another model ({meta['model'].get('path')}), "
            f"not of {loaded.source}: give another --features folder, or make them again with "
            f"`rcnn features {cfg.model} --out {root} --overwrite`"
        )
    try:
        store = FeatureStore(root, cfg.split, layer)
        store.check_regions(regions, cfg.data)
        return store
    except FeatureStoreError as err:
        if world is not None and world.enabled:
            raise FeatureStoreError(
                f"--features {root}: {err}; under torchrun, complete it first with `torchrun "
                f"... -m rcnn features {cfg.model} --data {cfg.data} --out {root}`"
            ) from None
        logger.info("computing %s features first (%s)", layer, err)
    layers = [n for n in LAYERS if n == layer or n in (meta["layers"] if meta else [])]
    features = FeaturesConfig(
        model=cfg.model, data=cfg.data, out=str(root), splits=[cfg.split], layers=layers,
        inference=cfg.inference, progress=cfg.progress,
    )  # fmt: skip
    try:
        run_features(features)
    except StoreClash as clash:  # its flags are those of `rcnn features`, not this command
        raise FeatureStoreError(
            f"--features {root} holds features made otherwise ({', '.join(clash.clash)}): "
            f"give another --features folder, or make them again with `rcnn features "
            f"{cfg.model} --data {cfg.data} --out {root} --overwrite`"
        ) from None
    store = FeatureStore(root, cfg.split, layer)
    store.check_regions(regions, cfg.data)
    return store


def _source_info(loaded, features) -> dict:
    """What a head records of the features it was trained on."""
    where = str(features.root) if isinstance(features, FeatureStore) else "computed on the fly"
    return {"model": loaded.record(), "features": where}


def _memory(features, held_bytes: int) -> dict:
    """Megabytes held: decoded images (a stream), features (positives, caches, examples)."""
    images = getattr(features, "image_bytes", 0)
    computed = getattr(features, "computed", 0)
    return {"images_mb": round(images / 1e6, 1), "features_mb": round(held_bytes / 1e6, 1),
            "regions_computed": computed}  # fmt: skip


HEAD_FILES = ("svm.npz", "svm.json", "svm_log.csv", "bbox.npz", "bbox.json", "bbox_log.csv")


def refuse_earlier_heads(out: Path) -> None:
    """SVMs or regressors already in ``out`` are replaced only when asked (``--overwrite``):
    they may be of another layer, network or split, and `rcnn test` would take the new ones
    for them."""
    found = [name for name in HEAD_FILES if (out / name).exists()]
    if found:
        raise RcnnError(
            f"--out {out} already holds {', '.join(found)}; pass --overwrite to replace them, "
            "or choose another --out"
        )


def _run_head(cfg: HeadConfig, layer: str, command: str, folder: str, stage) -> dict | None:
    """The frame of ``train-svm`` and ``train-bbox``: under torchrun every process computes its
    share of the features on the fly (:mod:`rcnn.runtime.shared`) while rank 0 trains, writes
    and returns ``stage(out, loaded, regions, features)``; the other ranks return ``None``."""
    from rcnn.runtime.shared import SharedWork, run_on_main

    out = Path(cfg.out or run_part(cfg.model, folder))
    with run_stage(command, cfg.inference.device, cfg) as frame:
        from rcnn.runtime.device import resolve_device

        resolve_device(frame.device)  # a device that is not there is named, store or not
        cfg = replace(cfg, inference=replace(cfg.inference, device=frame.device))
        frame.claim(out, None if cfg.overwrite else refuse_earlier_heads)
        loaded, regions, features = frame.everywhere(
            lambda: feature_source(cfg, layer, frame.world, command)
        )
        frame.agree(loaded.digest, f"the weights of {cfg.model}")
        frame.agree(regions.info.get("generation"), f"the region store of split {cfg.split}")
        shared = SharedWork(frame.world, getattr(features, "compute", None))
        if isinstance(features, FeatureStream) and frame.world.enabled:
            features.shared = shared
        return run_on_main(shared, lambda: stage(out, loaded, regions, features))


def run_train_svm(cfg: HeadConfig, svm: SVMConfig) -> dict | None:
    """Trains the SVMs; writes ``svm.npz``, ``svm.json`` and ``svm_log.csv``."""

    def stage(out, loaded, regions, features) -> dict:
        start = time.perf_counter()

        def report(row: dict) -> None:
            logger.info(
                "pass %d %s: %d positives, %d hard added, %d easy dropped, %d dropped over "
                "the budget, %d in the cache (%.1f MB for all classes), objective %.5f",
                row["pass"], row["class"], row["positives"], row["hard_added"],
                row["easy_dropped"], row["budget_dropped"], row["negatives_in_cache"],
                row["cache_mb"], row["objective"],
            )  # fmt: skip

        from rcnn.runtime.device import resolve_device

        device = resolve_device(cfg.inference.device)  # the solver's: the stage's device
        model, log = train_svms(regions, features, svm, report, device)
        model.info.update(_source_info(loaded, features), layer=svm.layer)
        model.save(out)
        write_log(out / "svm_log.csv", log)
        held = int(max(r["cache_mb"] for r in log) * 1e6) + model.weights.nbytes
        return {"out": str(out), "log": log, "seconds": round(time.perf_counter() - start, 1),
                "scale": model.scale, "classes": model.classes,
                "features": model.info["features"], "memory": _memory(features, held)}  # fmt: skip

    return _run_head(cfg, svm.layer, "rcnn train-svm", "svm", stage)


def run_layer_svms(cfg: HeadConfig, svm: SVMConfig, layers, folders=None) -> dict | None:
    """SVMs on each of ``layers`` of one network, from one pass of its features computed on
    the fly, each in ``cfg.out/{layer}/`` (or ``folders[layer]``); a folder that holds SVMs of
    this network, regions and settings already is kept. Returns ``{layer: folder}`` (``None``
    on torchrun's other ranks)."""
    from rcnn.runtime.distributed import broadcast
    from rcnn.runtime.shared import SharedWork, run_on_main

    out = Path(cfg.out)
    where = {n: Path(folders[n]) if folders and n in folders else out / n for n in layers}
    settings = {"heads": cfg, "svm": svm, "layers": {n: str(f) for n, f in where.items()}}
    with run_stage("rcnn train-svm", cfg.inference.device, settings) as frame:
        cfg = replace(cfg, inference=replace(cfg.inference, device=frame.device))
        frame.claim(out)
        for folder in where.values():
            if out not in folder.parents:
                frame.claim(folder)  # another stage's folder (the run's svm/): held as well
        loaded, regions = frame.everywhere(lambda: head_inputs(cfg, "rcnn train-svm"))
        frame.agree(loaded.digest, f"the weights of {cfg.model}")
        frame.agree(regions.info.get("generation"), f"the region store of split {cfg.split}")
        todo = [n for n in layers if not _made_as(where[n], loaded, regions, replace(svm, layer=n))]
        todo = broadcast(todo)
        if todo:
            stream = FeatureStream(loaded, regions, todo[0], cfg.inference, cfg.progress,
                                   layers=tuple(todo))  # fmt: skip
            shared = SharedWork(frame.world, stream.compute)
            stream.shared = shared if frame.world.enabled else None

            def stage() -> None:
                from rcnn.runtime.device import resolve_device

                device = resolve_device(cfg.inference.device)
                found = train_layer_svms(regions, stream, svm, device=device)
                for layer, (model, log) in found.items():
                    model.info.update(_source_info(loaded, stream), layer=layer,
                                      regions=regions.info.get("generation"))  # fmt: skip
                    model.save(where[layer])
                    write_log(where[layer] / "svm_log.csv", log)

            run_on_main(shared, stage)
        return where if frame.world.is_main else None


def _made_as(folder: Path, loaded, regions, svm: SVMConfig) -> bool:
    """Whether ``folder`` holds SVMs of this network and regions, made with ``svm``."""
    from dataclasses import asdict

    try:
        made = SVMModel.load(folder)
    except (FileNotFoundError, RcnnError):
        return False
    return (
        made.info.get("model", {}).get("digest") == loaded.digest
        and made.info.get("regions") == regions.info.get("generation")
        and made.info.get("config") == asdict(svm)
    )


def run_train_bbox(cfg: HeadConfig, bbox: BBoxConfig) -> dict | None:
    """Fits the box regressors; writes ``bbox.npz``, ``bbox.json`` and ``bbox_log.csv``."""

    def stage(out, loaded, regions, features) -> dict:
        start = time.perf_counter()
        model, log = train_bbox(regions, features, bbox)
        model.info.update(_source_info(loaded, features))
        model.save(out)
        write_log(out / "bbox_log.csv", log)
        held = max(r["examples"] for r in log) * features.dim * 4
        return {"out": str(out), "log": log, "seconds": round(time.perf_counter() - start, 1),
                "features": model.info["features"], "memory": _memory(features, held)}  # fmt: skip

    return _run_head(cfg, "pool5", "rcnn train-bbox", "bbox", stage)


def write_log(path: Path, rows: list[dict]) -> None:
    if not rows:
        raise RcnnError("nothing was trained")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())
