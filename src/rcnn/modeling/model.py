"""Region classifiers: a torchvision ImageNet classifier with a new ``num_classes``-way head."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from rcnn.data.feeders import Warp
from rcnn.errors import ConfigError, RcnnError
from rcnn.modeling.backbones import IMAGENET_MEAN, IMAGENET_STD, OWN

logger = logging.getLogger(__name__)


class WeightsError(RcnnError):
    """Pretrained weights could not be loaded; the message says how to pass a local file."""


def head_name(model: nn.Module) -> str:
    """Dotted name of the model's last ``nn.Linear``: the layer that maps features to classes."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classification layer")
    return names[-1]


def _replace_head(model: nn.Module, num_classes: int) -> str:
    name = head_name(model)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    return name


def weights_enum(backbone: str):
    """The default ImageNet weights of a torchvision classifier (metadata only, no download)."""
    if backbone in OWN:
        raise ConfigError(
            f"--backbone {backbone} has no pretrained weights: pass --weights none (or a "
            "file of its own)"
        )
    classifiers = models.list_models(module=models)  # not detection or segmentation models
    if backbone not in classifiers:
        raise ConfigError(
            f"--backbone {backbone!r} is not a torchvision ImageNet classifier "
            f"(e.g. {', '.join(classifiers[:12])}, ...) nor one of {', '.join(OWN)}"
        )
    return models.get_model_weights(backbone).DEFAULT


def normalization(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the backbone's pretrained weights expect, from their metadata
    (ImageNet's for a backbone of this project's own)."""
    if backbone in OWN:
        return IMAGENET_MEAN, IMAGENET_STD
    preset = weights_enum(backbone).transforms()
    return tuple(preset.mean), tuple(preset.std)


NORMS = ("imagenet", "half")


@dataclass(frozen=True)
class ModelSpec:
    """What using a fine-tuned network needs besides its weights: the torchvision backbone,
    and how regions are warped and normalized for it (as it was trained)."""

    backbone: str = "alexnet"
    input_size: int = 227
    context_pad: int = 0  # pixels of context around a region after warping (R-CNN: 16)
    norm: str = "imagenet"  # imagenet: the backbone's weights metadata; half: 0.5 / 0.5

    def __post_init__(self):
        if self.input_size < 32 or not 0 <= 2 * self.context_pad < self.input_size:
            raise ConfigError(
                f"input size {self.input_size} and context padding {self.context_pad}: the size "
                "must be >= 32 and the padding in [0, size / 2)"
            )
        if self.norm not in NORMS:
            raise ConfigError(f"normalization must be one of {NORMS}, got {self.norm!r}")

    @classmethod
    def of(cls, settings) -> ModelSpec:
        """The spec within training settings (a ``TrainConfig`` or its dict)."""
        get = settings.get if isinstance(settings, dict) else lambda k, d: getattr(settings, k, d)
        defaults = cls()
        return cls(**{f.name: get(f.name, getattr(defaults, f.name)) for f in fields(cls)})

    def warp(self) -> Warp:
        """How regions are cut, resized and normalized for this network."""
        if self.norm == "half":  # the recipe's Normalize((0.5,) * 3, (0.5,) * 3)
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        else:
            mean, std = normalization(self.backbone)
        return Warp(self.input_size, self.context_pad, mean, std)


def imagenet_weights_cached(backbone: str) -> bool:
    """Whether the ImageNet weights file is already in the torch hub cache (no download)."""
    if backbone in OWN:
        return False
    url = weights_enum(backbone).url
    return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)).is_file()


def _load_state_dict(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--weights {path}: file not found") from err
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"--weights {path}: not a readable state dict ({first})") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint (last.pt / best.pt)
    if not isinstance(state, dict):
        raise WeightsError(f"--weights {path}: expected a state dict, got {type(state).__name__}")
    return state


def build_model(backbone: str = "alexnet", num_classes: int = 2, weights: str = "imagenet"):
    """A torchvision classifier whose last linear layer has ``num_classes`` outputs.

    Args:
        backbone: any torchvision classification model name (alexnet, vgg16, resnet50, ...),
            or ``alexnet_tiny`` (:mod:`rcnn.modeling.backbones`, random initialisation).
        num_classes: outputs of the new head (K classes + background).
        weights: ``imagenet`` (torchvision's weights API: downloaded once, then cached),
            ``none`` (random initialisation), or a path to a state dict: either the ImageNet
            model's (e.g. torchvision's ``alexnet-owt-7be5be79.pth``) or one with this head.

    Returns:
        The model; ``model.rcnn_head`` names its new head layer.
    """
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 (classes + background), got {num_classes}")
    if backbone in OWN:
        model = OWN[backbone]()
    else:
        weights_enum(backbone)  # an unknown name is refused by name
        model = models.get_model(backbone, weights=None)
    if weights == "imagenet":
        enum = weights_enum(backbone)  # refuses a backbone without pretrained weights
        try:
            state = enum.get_state_dict(progress=False, check_hash=True)
        except Exception as err:  # no network, proxy, SSL, disk full...
            raise WeightsError(
                f"could not get the ImageNet weights of {backbone} from {enum.url} ({err}). "
                f"Offline? Download that file elsewhere and pass --weights PATH, copy it into "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'}, or use --weights none"
            ) from err
        model.load_state_dict(state)
    elif weights not in ("none", None):
        state = _load_state_dict(weights)
        head = head_name(model)
        if state.get(f"{head}.weight") is not None and state[f"{head}.weight"].shape[0] == (
            num_classes
        ):
            model.rcnn_head = _replace_head(model, num_classes)
            _strict_load(model, state, weights)
            return model
        _strict_load(model, state, weights)
    model.rcnn_head = _replace_head(model, num_classes)
    return model


def _strict_load(model: nn.Module, state: dict, path: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [
        k for k in own if k in state and tuple(getattr(state[k], "shape", ())) != own[k].shape
    ]
    problems = [
        f"{len(keys)} {what} (e.g. {keys[0]})"
        for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (resized, "resized"))
        if keys
    ]
    if problems:
        raise WeightsError(
            f"--weights {path} does not fit torchvision's {type(model).__name__}: "
            f"{', '.join(problems)} of its {len(own)} tensors; is it another --backbone's?"
        )
    model.load_state_dict(state)


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float):
    """Optimizer groups: the backbone at ``lr``, the new head at ``lr * head_lr_mult``."""
    head = model.rcnn_head + "."
    named = list(model.named_parameters())
    body = [p for n, p in named if not n.startswith(head)]
    new = [p for n, p in named if n.startswith(head)]
    return [
        {"params": body, "lr": lr, "weight_decay": weight_decay},
        {"params": new, "lr": lr * head_lr_mult, "weight_decay": weight_decay},
    ]


def check_input_size(model: nn.Module, size: int, backbone: str) -> None:
    """Runs one blank ``size`` x ``size`` image through ``model`` (on the CPU, no gradients),
    so a backbone that cannot take that size is reported before any data is loaded."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    except (RuntimeError, AssertionError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"--backbone {backbone} cannot take --input-size {size} ({first}); "
            "try its own input size (224 for most torchvision classifiers)"
        ) from err
    finally:
        model.train(training)
