"""Checkpoints: `rcnn train`'s files written and read, and a fine-tuned network loaded for use.

A checkpoint (``last.pt``, ``best.pt``) is a dict with ``format: "rcnn-checkpoint"``: the
model's and the optimizer's state, the epoch, the training settings, the classes (background
first), the history and the best epoch. It is read with ``weights_only=True``: no pickle is
ever run. ``model.pth`` is the plain state dict of the best weights, with the run's
``config.json`` beside it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rcnn.data.annotations import check_class_names
from rcnn.errors import ConfigError, RcnnError
from rcnn.files import DamagedFileError, atomic_write_bytes, read_json, require_keys
from rcnn.modeling.model import ModelSpec, build_model
from rcnn.runtime.config import InferenceConfig

logger = logging.getLogger(__name__)

FORMAT = "rcnn-checkpoint"
KEYS = ("epoch", "config", "classes", "model", "optimizer", "scheduler", "history", "best")


class CheckpointError(RcnnError):
    """A checkpoint is missing, damaged, or does not fit the data."""


def checkpoint_record(
    epoch: int, config: dict, classes: list[str], state: dict, history: list, best: dict | None
) -> dict:
    """What ``last.pt`` and ``best.pt`` hold (the schema :func:`load_checkpoint` reads):
    ``epoch`` epochs trained with ``config``, the ``classes`` (background first), ``state``
    (the model's, optimizer's and scheduler's state dicts), the history rows and best epoch."""
    record = {"format": FORMAT, "epoch": epoch, "config": config, "classes": classes,
              **state, "history": history, "best": best}  # fmt: skip
    assert set(record) == {"format", *KEYS}, sorted(record)
    return record


def save_checkpoint(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def link_atomic(source: Path, target: Path) -> None:
    """Makes ``target`` another name of ``source``'s bytes, replacing it atomically."""
    tmp = target.with_name(f".{target.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # file systems without hard links
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def checkpoint_path(path: str | Path, default: str = "last.pt") -> Path:
    """A checkpoint file, or ``RUN/default`` when given a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / default
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (give a run folder or a .pt file)")
    return path


def _read(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint, truncated or damaged ({type(err).__name__}: {err})"
        ) from err


def _is_state_dict(value) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def load_checkpoint(path: str | Path) -> dict:
    """Reads a ``last.pt``/``best.pt`` file (``RUN/last.pt`` when given a run folder)."""
    path = checkpoint_path(path)
    ckpt = _read(path)
    if _is_state_dict(ckpt):
        raise CheckpointError(
            f"{path} holds only weights (a state dict such as `rcnn train`'s model.pth); "
            f"give its run folder or best.pt, which also record the classes and settings"
        )
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an rcnn checkpoint (use `rcnn train` to make one)")
    require_keys(ckpt, KEYS, path, "rcnn train")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{path}: its config is not a mapping (damaged?)")
    return ckpt


def check_classes(ckpt: dict, class_names: list[str], path) -> None:
    """Refuses a checkpoint of other classes (``class_names`` with background first)."""
    if ckpt.get("classes") != class_names:
        raise CheckpointError(
            f"{path} was trained for classes {ckpt.get('classes')} "
            f"({len(ckpt.get('classes') or [])} outputs) but the data has "
            f"{class_names} ({len(class_names)})"
        )


@dataclass
class LoadedModel:
    """A fine-tuned classifier with what using it needs to know."""

    model: torch.nn.Module
    classes: list[str]  # object classes; output 0 is background
    spec: ModelSpec  # backbone, input size, context padding, normalization
    source: str

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of the weights (names, dtypes, shapes and values): what tells this model
        from another of the same architecture, wherever its file lies and whatever it holds
        besides (``best.pt`` and ``model.pth`` of one epoch have the same digest)."""
        return weights_digest(self.model.state_dict())

    def record(self) -> dict:
        """What outputs made with this network record of it: the digest of its weights (what
        tells it apart), its file and what using it needs."""
        return {"digest": self.digest, "path": str(Path(self.source).resolve()),
                **asdict(self.spec), "classes": self.classes}  # fmt: skip

    def for_inference(self, cfg: InferenceConfig, device: torch.device | None = None):
        """The device, ``cfg`` decided for it (batch, precision) and the model there in eval
        mode (channels_last: faster on CPUs and GPUs alike)."""
        from rcnn.runtime.device import resolve_inference

        self.digest  # noqa: B018 - taken before the weights move off the CPU
        device, settings = resolve_inference(cfg, device)
        model = self.model.to(device, memory_format=torch.channels_last).eval()
        return device, settings, model


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
    state = _read(path)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        require_keys(state, ("config", "classes", "model"), path, "rcnn train")
        spec = _spec(state["config"], path)
        names = check_class_names(state["classes"][1:], str(path))
        if classes and [c.lower() for c in classes] != [c.lower() for c in names]:
            raise CheckpointError(f"--classes {' '.join(classes)}: {path} was trained for {names}")
        weights = state["model"]
    else:
        if not classes:
            raise ConfigError(
                f"{path} holds only weights: give its run folder (or best.pt), which knows the "
                "classes; commands that have --classes also take them in the training order"
            )
        names = check_class_names(classes, "--classes")
        spec, weights = _spec_beside(path), state
    model = build_model(spec.backbone, len(names) + 1, "none")
    head = weights.get(f"{model.rcnn_head}.weight") if isinstance(weights, dict) else None
    if head is not None and head.shape[0] != len(names) + 1:
        raise CheckpointError(
            f"{path} has {head.shape[0]} outputs but --classes gives {len(names)} classes "
            f"+ background"
        )
    try:
        model.load_state_dict(weights)
    except (RuntimeError, AttributeError, TypeError) as err:
        raise CheckpointError(f"{path} does not fit --backbone {spec.backbone}") from err
    return LoadedModel(model.eval(), names, spec, str(path))


def _spec(settings, source: Path) -> ModelSpec:
    if not isinstance(settings, dict):
        raise DamagedFileError(f"{source}: its settings are not a mapping (damaged?)")
    try:
        return ModelSpec.of(settings)
    except (ConfigError, TypeError) as err:  # its checks name settings; the value came from here
        raise DamagedFileError(f"{source}: a setting that rcnn cannot use ({err})") from None


def _spec_beside(path: Path) -> ModelSpec:
    config = path.parent / "config.json"
    if not config.is_file():
        logger.info("no config.json beside %s: AlexNet at 227x227, no context padding", path)
        return ModelSpec()
    return _spec(read_json(config, "`rcnn train` config"), config)


def initial_network(run: str | Path, scratch: str | Path) -> tuple[Path, str]:
    """The network a run started from, as a checkpoint file, and what it is: the run's
    ``initial.pt`` (``rcnn train`` keeps it), or, for a run from ImageNet's weights, those
    weights (from torchvision's cache) with the run's new head, written to ``scratch``."""
    run = Path(run)
    if (run / "initial.pt").is_file():
        return run / "initial.pt", "the run's initial weights (initial.pt)"
    ckpt = load_checkpoint(run / "last.pt")
    config = ckpt["config"]
    if config.get("weights") != "imagenet":
        raise CheckpointError(
            f"{run} has no initial.pt, the weights it started from (runs keep it since rcnn "
            "records the network before fine-tuning): train it again to compare with it"
        )
    torch.manual_seed(config.get("seed", 0))  # the new head as the run drew it
    model = build_model(config.get("backbone", "alexnet"), len(ckpt["classes"]), "imagenet")
    state = {"model": model.state_dict(), "optimizer": {}, "scheduler": {}}
    path = Path(scratch) / "initial.pt"
    save_checkpoint(path, checkpoint_record(0, config, ckpt["classes"], state, [], None))
    return path, f"ImageNet's weights of {config.get('backbone', 'alexnet')} (torchvision)"
