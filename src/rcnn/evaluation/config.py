"""Settings of ``rcnn visualize``; free of torch, so that the command line can show them."""

from __future__ import annotations

from dataclasses import dataclass, field

from rcnn.runtime.config import InferenceConfig


@dataclass
class VisualizeConfig:
    model: str
    data: str
    classes: list[str] | None = None  # needed only for a plain state dict (model.pth)
    split: str = "val"
    out: str | None = None  # default: RUN/units-SPLIT
    units: int = 6  # how many units to choose (without ``unit``)
    unit: list[tuple[int, int, int]] = field(default_factory=list)  # (channel, y, x)
    top: int = 8  # regions drawn a unit
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    progress: bool = True
    overwrite: bool = False  # replace a units.json or units.png it did not write
