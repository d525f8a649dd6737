"""A fine-tuned classifier loaded for use: from a run folder, a checkpoint or a state dict,
with the settings its inputs need (backbone, input size, context padding, normalization)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from rcnn.errors import ConfigError
from rcnn.modeling.model import build_model
from rcnn.training.config import TrainConfig
from rcnn.training.train import CheckpointError, config_from_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A fine-tuned classifier with what scoring needs to know about it."""

    model: torch.nn.Module
    classes: list[str]  # object classes; output 0 is background
    config: TrainConfig  # backbone, input size, context padding, normalization
    source: str


def load_model(path: str | Path, classes: list[str] | None = None) -> LoadedModel:
    """A run folder (its ``best.pt``), a ``best.pt``/``last.pt`` checkpoint, or a plain state dict
    such as ``model.pth`` with ``classes`` (its settings are read from a ``config.json`` beside
    it when there is one: backbone, input size, context padding, normalization)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: model not found (give a run folder, best.pt or model.pth)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable model, truncated or damaged") from err
    if isinstance(state, dict) and state.get("format") == "rcnn-checkpoint":
        cfg, names = config_from_checkpoint(state), list(state["classes"][1:])
        if classes and [c.lower() for c in classes] != [c.lower() for c in names]:
            raise CheckpointError(f"--classes {' '.join(classes)}: {path} was trained for {names}")
        weights = state["model"]
    else:
        if not classes:
            raise ConfigError(
                f"{path} holds only weights: pass --classes (in the training order) or give its "
                "run folder"
            )
        cfg, names, weights = _config_beside(path), list(classes), state
    model = build_model(cfg.backbone, len(names) + 1, "none")
    head = weights.get(f"{model.rcnn_head}.weight") if isinstance(weights, dict) else None
    if head is not None and head.shape[0] != len(names) + 1:
        raise CheckpointError(
            f"{path} has {head.shape[0]} outputs but --classes gives {len(names)} classes "
            f"+ background"
        )
    try:
        model.load_state_dict(weights)
    except (RuntimeError, AttributeError) as err:
        raise CheckpointError(f"{path} does not fit --backbone {cfg.backbone}") from err
    return LoadedModel(model.eval(), names, cfg, str(path))


def _config_beside(path: Path) -> TrainConfig:
    config = path.parent / "config.json"
    if not config.is_file():
        logger.info("no config.json beside %s: AlexNet at 227x227, no context padding", path)
        return TrainConfig()
    known = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{k: v for k, v in json.loads(config.read_text()).items() if k in known})


def for_inference(loaded: LoadedModel, device: str, threads: int, batch: int, amp: bool | None):
    """The device, the run's settings for scoring there (warp threads, batch, precision) and
    the model on that device in eval mode: what the detector and feature extraction share."""
    from dataclasses import replace

    from rcnn.training.train import configure_device, for_device, resolve_device

    dev = resolve_device(device)
    configure_device(dev)
    settings = replace(loaded.config, workers=threads, pipeline="auto", amp=amp, val_batch=batch)
    settings = for_device(settings, dev)
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    return dev, settings, loaded.model.to(dev, memory_format=fmt).eval()
