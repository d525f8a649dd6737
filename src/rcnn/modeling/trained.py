"""A fine-tuned classifier loaded for use: from a run folder, a checkpoint or a state dict,
with the settings its inputs need (backbone, input size, context padding, normalization)."""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from rcnn.data.voc import check_class_names
from rcnn.errors import ConfigError
from rcnn.files import DamagedFileError, read_json, require_keys
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

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of the weights (names, dtypes, shapes and values): what tells this model
        from another of the same architecture, wherever its file lies and whatever it holds
        besides (``best.pt`` and ``model.pth`` of one epoch have the same digest)."""
        return weights_digest(self.model.state_dict())


def weights_digest(state: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
        require_keys(state, ("config", "classes", "model"), path, "rcnn train")
        cfg = config_from_checkpoint(state)
        names = check_class_names(state.get("classes", [])[1:], str(path))
        if classes and [c.lower() for c in classes] != [c.lower() for c in names]:
            raise CheckpointError(f"--classes {' '.join(classes)}: {path} was trained for {names}")
        weights = state["model"]
    else:
        if not classes:
            raise ConfigError(
                f"{path} holds only weights: pass --classes (in the training order) or give its "
                "run folder"
            )
        names = check_class_names(classes, "--classes")
        cfg, weights = _config_beside(path), state
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
    values = read_json(config, "`rcnn train` config")
    known = set(TrainConfig.__dataclass_fields__)
    try:
        return TrainConfig(**{k: v for k, v in values.items() if k in known})
    except (ConfigError, TypeError) as err:  # its checks name flags; the value came from here
        raise DamagedFileError(f"{config}: a setting that rcnn cannot use ({err})") from None


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
