"""Checkpoints: `rcnn train`'s files written and read, and a fine-tuned network loaded for use.

A checkpoint (``last.pt``, ``best.pt``) is a dict with ``format: "rcnn-checkpoint"``: the
model's and the optimizer's state, the epoch, the training settings, the classes (background
first), the history and the best epoch. It is read with ``weights_only=True``: no pickle is
ever run. ``model.pth`` is the plain state dict of the best weights, with the run's
``config.json`` beside it. Every field is checked when loading: a damaged or crafted file is
a one-line error naming it, never a traceback from deep inside.

Each file written here has its SHA-256 in the folder's ``checkpoints.json`` (the bytes are
hashed as they are written and as they are read, one pass each): a file whose bytes changed
since (a flipped bit) is refused naming it. A file without an entry (a user's own weights)
loads unchecked. Replacing a file writes its new digest to the record first, with the old one
still accepted, then the file, then the record without the old digest: a kill anywhere in
between leaves a file that the record accepts.
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

from rcnn.data.annotations import check_class_names, class_key
from rcnn.errors import ConfigError, RcnnError
from rcnn.files import (
    DamagedFileError,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    read_regular_file,
    require_keys,
)
from rcnn.modeling.model import ModelSpec, build_model
from rcnn.runtime.config import InferenceConfig

logger = logging.getLogger(__name__)

FORMAT = "rcnn-checkpoint"
KEYS = ("epoch", "config", "classes", "model", "optimizer", "scheduler", "history", "best")
RECORD = "checkpoints.json"  # the digests of the checkpoints of a folder
RECORD_FORMAT = "rcnn-checkpoint-digests"


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
    """``obj`` written to ``path`` atomically, its digest in the folder's record."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    path = Path(path)
    _replace_recorded(
        path, hashlib.sha256(data).hexdigest(), lambda: atomic_write_bytes(path, data)
    )


def link_atomic(source: Path, target: Path) -> None:
    """Makes ``target`` another name of ``source``'s bytes (in the same folder), replacing it
    atomically; the record gives it ``source``'s digest."""
    source, target = Path(source), Path(target)

    def link() -> None:
        tmp = target.with_name(f".{target.name}.link")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:  # file systems without hard links
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)

    entry = _read_record(source.parent)["files"].get(source.name)
    if entry is None:  # a source this module did not write: nothing to record
        link()
        return
    _replace_recorded(target, entry["sha256"], link)


def _read_record(folder: Path) -> dict:
    """``folder/checkpoints.json``: ``{"format", "files": {name: {"sha256"[, "replacing"]}}}``
    (no file: no entry); a damaged one is an error naming it."""
    path = folder / RECORD
    if not path.exists():
        return {"format": RECORD_FORMAT, "files": {}}
    record = read_json(path, "record of checkpoint digests")
    files = record.get("files")
    good = record.get("format") == RECORD_FORMAT and isinstance(files, dict)
    if not good or not all(_entry_ok(e) for e in files.values()):
        raise DamagedFileError(
            f"{path}: not a record of checkpoint digests (damaged?); remove it to load the "
            "checkpoints beside it unchecked"
        )
    return record


def _entry_ok(entry) -> bool:
    digests = [entry.get("sha256"), *([entry["replacing"]] if "replacing" in entry else [])]
    return all(d is None or (isinstance(d, str) and len(d) == 64) for d in digests) and (
        isinstance(entry.get("sha256"), str)
    )


def _replace_recorded(path: Path, digest: str, write) -> None:
    """Runs ``write()``, which replaces ``path`` by bytes of SHA-256 ``digest``, with the
    record replaced around it: first the new digest with the file's present one still
    accepted (``replacing``; ``None`` for a file without an entry), then the file, then the
    new digest alone. A kill at any point leaves a file the record accepts."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    record = _read_record(folder)
    files = record["files"]
    old = files.get(path.name)
    if path.exists():
        files[path.name] = {"sha256": digest, "replacing": old["sha256"] if old else None}
        atomic_write_json(folder / RECORD, record)
    write()
    files[path.name] = {"sha256": digest}
    atomic_write_json(folder / RECORD, record)


def _verify(path: Path, data: bytes) -> None:
    """Refuses ``data``, read from ``path``, when its folder's record holds another digest."""
    path = path.resolve()
    entry = _read_record(path.parent)["files"].get(path.name)
    if entry is None:
        return
    digest = hashlib.sha256(data).hexdigest()
    if digest == entry["sha256"]:
        return
    if "replacing" in entry and entry["replacing"] in (None, digest):
        logger.info("%s: the file before a replacement that did not finish (a killed run)", path)
        return
    raise CheckpointError(
        f"{path} is damaged: its bytes are not those rcnn wrote (SHA-256 in "
        f"{path.parent / RECORD}); use the other checkpoint of the run or train again (a "
        f"file replaced on purpose: remove its entry from {RECORD})"
    )


def checkpoint_path(path: str | Path, default: str = "last.pt") -> Path:
    """A checkpoint file, or ``RUN/default`` when given a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / default
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (give a run folder or a .pt file)")
    return path


def _read(path: Path):
    """The object of a checkpoint file, its bytes checked against the folder's record."""
    try:
        data = read_regular_file(path)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read it ({err.strerror or err})") from None
    _verify(path, data)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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
    check_fields(ckpt, path)
    return ckpt


def _is_classes(value) -> bool:
    """Background and at least one class, each a non-empty string, no two alike."""
    return (
        isinstance(value, list)
        and len(value) >= 2
        and all(isinstance(c, str) and c.strip() for c in value)
        and len({class_key(c) for c in value}) == len(value)
    )


def _is_history(value) -> bool:
    return isinstance(value, list) and all(isinstance(row, dict) for row in value)


# What each field of a checkpoint must be, and how the error calls it.
_FIELDS = {
    "epoch": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
              "a count of epochs"),
    "config": (lambda v: isinstance(v, dict), "a mapping of settings"),
    "classes": (_is_classes, "a list of distinct class names, background first"),
    "model": (_is_state_dict, "a state dict (names to tensors)"),
    "optimizer": (lambda v: isinstance(v, dict), "an optimizer's state (a mapping)"),
    "scheduler": (lambda v: isinstance(v, dict), "a scheduler's state (a mapping)"),
    "history": (_is_history, "a list of epoch rows"),
    "best": (lambda v: v is None or isinstance(v, dict), "the best epoch (a mapping or null)"),
}  # fmt: skip


def check_fields(ckpt: dict, path) -> None:
    """Refuses a checkpoint any of whose fields is not what `rcnn train` writes, naming the
    file and the field."""
    for key, (ok, what) in _FIELDS.items():
        if key in ckpt and not ok(ckpt[key]):
            found = repr(ckpt[key]) if not isinstance(ckpt[key], dict) else "a mapping"
            found = found if len(found) <= 60 else found[:57] + "..."
            raise CheckpointError(
                f"{path}: its {key} is not {what} but {found} (damaged, or not written by "
                "rcnn train)"
            )
    if "classes" in ckpt:
        try:
            check_class_names(ckpt["classes"][1:], str(path))
        except ConfigError as err:  # the names came from the file, not from a flag
            raise CheckpointError(str(err)) from None


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
        check_fields(state, path)
        spec, where = _spec(state["config"], path), "as its settings say"
        names, named_by = list(state["classes"][1:]), "its classes give"
        if classes and [c.lower() for c in classes] != [c.lower() for c in names]:
            raise CheckpointError(f"--classes {' '.join(classes)}: {path} was trained for {names}")
        weights = state["model"]
    else:
        if not classes:
            raise ConfigError(
                f"{path} holds only weights: give its run folder (or best.pt), which knows the "
                "classes; commands that have --classes also take them in the training order"
            )
        names, named_by = check_class_names(classes, "--classes"), "--classes gives"
        if not _is_state_dict(state):
            raise CheckpointError(f"{path}: neither an rcnn checkpoint nor a state dict")
        (spec, where), weights = _spec_beside(path), state
    model = build_model(spec.backbone, len(names) + 1, "none")
    head = weights.get(f"{model.rcnn_head}.weight")
    if head is not None and head.shape[0] != len(names) + 1:
        raise CheckpointError(
            f"{path} has {head.shape[0]} outputs but {named_by} {len(names)} classes + background"
        )
    try:
        model.load_state_dict(weights)
    except (RuntimeError, AttributeError, TypeError) as err:
        lines = str(err).strip().splitlines() or [type(err).__name__]
        detail = (lines[1] if len(lines) > 1 else lines[0]).strip()[:200]
        raise CheckpointError(
            f"{path}: its weights do not fit the {spec.backbone} network ({where}): {detail}"
        ) from None
    return LoadedModel(model.eval(), names, spec, str(path))


def _spec(settings, source: Path) -> ModelSpec:
    if not isinstance(settings, dict):
        raise DamagedFileError(f"{source}: its settings are not a mapping (damaged?)")
    try:
        return ModelSpec.of(settings)
    except (ConfigError, TypeError) as err:  # its checks name settings; the value came from here
        raise DamagedFileError(f"{source}: a setting that rcnn cannot use ({err})") from None


def _spec_beside(path: Path) -> tuple[ModelSpec, str]:
    """The settings of a plain state dict, and where they come from."""
    config = path.parent / "config.json"
    if not config.is_file():
        logger.info("no config.json beside %s: AlexNet at 227x227, no context padding", path)
        return ModelSpec(), "no config.json beside it: the default"
    return _spec(read_json(config, "`rcnn train` config"), config), f"as {config} says"


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
