"""``rcnn train-svm`` and ``rcnn train-bbox``: R-CNN's heads on a fine-tuned network's features.

Both read the features of the training regions from a feature store (``RUN/features`` by
default), computing whatever is missing first (:mod:`rcnn.modeling.extract`), and write their
model to ``RUN/svm`` or ``RUN/bbox`` (or ``--out``).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path

from rcnn.data.feature_store import FeatureStore, FeatureStoreError, read_meta
from rcnn.errors import RcnnError
from rcnn.files import atomic_write_bytes, output_dir, output_lock, remove_temporaries
from rcnn.modeling.bbox_regression import train_bbox
from rcnn.modeling.config import BBoxConfig, FeaturesConfig, HeadConfig, SVMConfig
from rcnn.modeling.extract import StoreClash, run_features
from rcnn.modeling.svm import train_svms

logger = logging.getLogger(__name__)


def run_folder(model: str) -> Path:
    path = Path(model)
    return path if path.is_dir() else path.parent


def features_for(cfg: HeadConfig, layer: str) -> tuple:
    """The regions of ``cfg.split`` and their ``layer`` features, computed first if missing."""
    from rcnn.data.regions import load_split
    from rcnn.modeling.checkpoint import load_model

    loaded = load_model(cfg.model)
    regions = load_split(cfg.data, cfg.split)
    regions.require_truth(f"train-{'svm' if layer == 'fc7' else 'bbox'}")
    root = Path(cfg.features) if cfg.features else run_folder(cfg.model) / "features"
    meta = read_meta(root)
    if meta is not None and meta["model"].get("digest") != loaded.digest:
        raise FeatureStoreError(
            f"--features {root} holds features of another model ({meta['model'].get('path')}), "
            f"not of {loaded.source}: give another --features folder, or make them again with "
            f"`rcnn features {cfg.model} --out {root} --overwrite`"
        )
    try:
        store = FeatureStore(root, cfg.split, layer)
        store.check_regions(regions, cfg.data)
    except FeatureStoreError as err:
        logger.info("computing %s features first (%s)", layer, err)
        layers = sorted({layer, *(meta["layers"] if meta else [])}, key=["fc7", "pool5"].index)
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
    return loaded, regions, store


def run_train_svm(cfg: HeadConfig, svm: SVMConfig) -> dict:
    """Trains the SVMs; writes ``svm.npz``, ``svm.json`` and ``svm_log.csv``."""
    loaded, regions, features = features_for(cfg, "fc7")
    out = output_dir(cfg.out or run_folder(cfg.model) / "svm")
    start = time.perf_counter()

    def report(round_: int, log: list[dict]) -> None:
        for row in log:
            if row["round"] == round_:
                logger.info(
                    "round %d %s: %d positives, %d negatives in the cache, objective %.5f",
                    round_, row["class"], row["positives"], row["negatives_in_cache"],
                    row["objective"],
                )  # fmt: skip

    with output_lock(out, "rcnn train-svm"):
        remove_temporaries(out)
        model, log = train_svms(regions, features, svm, report)
        model.info.update(model=features.meta["model"], features=str(features.root))
        model.save(out)
        write_log(out / "svm_log.csv", log)
    return {"out": str(out), "log": log, "seconds": round(time.perf_counter() - start, 1),
            "scale": model.scale, "classes": model.classes}  # fmt: skip


def run_train_bbox(cfg: HeadConfig, bbox: BBoxConfig) -> dict:
    """Fits the box regressors; writes ``bbox.npz``, ``bbox.json`` and ``bbox_log.csv``."""
    loaded, regions, features = features_for(cfg, "pool5")
    out = output_dir(cfg.out or run_folder(cfg.model) / "bbox")
    start = time.perf_counter()
    with output_lock(out, "rcnn train-bbox"):
        remove_temporaries(out)
        model, log = train_bbox(regions, features, bbox)
        model.info.update(model=features.meta["model"], features=str(features.root))
        model.save(out)
        write_log(out / "bbox_log.csv", log)
    return {"out": str(out), "log": log, "seconds": round(time.perf_counter() - start, 1)}


def write_log(path: Path, rows: list[dict]) -> None:
    if not rows:
        raise RcnnError("nothing was trained")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())
