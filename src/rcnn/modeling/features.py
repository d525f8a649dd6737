"""Region features of a fine-tuned classifier, taken in the same forward pass as its scores.

* ``fc7``: the input of the classifier's last layer. For AlexNet that is fc7 after its ReLU
  (4,096 values), the features R-CNN trains its SVMs on; for other torchvision backbones, the
  layer before their last ``nn.Linear`` (ResNet-50: the 2,048 pooled features).
* ``fc6``: the input of the second ``nn.Linear``: AlexNet's fc6 after its ReLU (4,096 values);
  the same tap as ``fc7`` for a backbone with fewer than three linear layers.
* ``pool5``: the input of the classifier's first ``nn.Linear``. For AlexNet that is pool5,
  256 x 6 x 6 = 9,216 values, R-CNN's features for box regression (VGG-16: 25,088); for a
  backbone with a single linear layer it is the same tap as ``fc7``.

Forward hooks read the inputs of those layers, so the model runs unchanged: in eval mode,
dropout is off and every region is seen unflipped. The paper's Table 2 compares SVMs on the
three.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from rcnn.modeling.config import LAYERS


def tapped_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers whose inputs are the features: pool5 the first one's, fc6 the
    second's (the first's where there are fewer than three), fc7 the head's."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    head = model.get_submodule(model.rcnn_head)
    return {"pool5": linears[0], "fc6": linears[1] if len(linears) >= 3 else head, "fc7": head}


def feature_dims(model: nn.Module) -> dict[str, int]:
    return {name: module.in_features for name, module in tapped_modules(model).items()}


class FeatureTaps:
    """Within ``with FeatureTaps(model, layers) as taps:``, every forward pass leaves the
    requested features in ``taps.outputs`` (``[B, D]`` tensors)."""

    def __init__(self, model: nn.Module, layers=LAYERS):
        unknown = set(layers) - set(LAYERS)
        if unknown:
            raise ValueError(f"unknown feature layers {sorted(unknown)}; known: {LAYERS}")
        self.outputs: dict[str, torch.Tensor] = {}
        modules = tapped_modules(model)
        self.handles = [modules[name].register_forward_hook(self._keep(name)) for name in layers]

    def _keep(self, name: str):
        def hook(module, inputs, output):
            self.outputs[name] = inputs[0].flatten(1)

        return hook

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def forward_features(
    model: nn.Module, feeder, layers, autocast_ctx
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Per batch of ``feeder``: softmax probabilities ``[B, K + 1]`` (float32) and the
    requested features (float16, on the model's device)."""
    model.eval()
    with FeatureTaps(model, layers) as taps:
        for images, _ in feeder:
            with autocast_ctx():
                logits = model(images)
            probs = logits.float().softmax(1)
            yield probs, {name: taps.outputs[name].to(torch.float16) for name in layers}
