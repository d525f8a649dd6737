"""Per-class linear models on a network's features: R-CNN's SVMs and box regressors.

Both keep, per class ``k``, a weight matrix and an offset applied to features scaled by one
factor (their mean L2 norm brought to 20, as in the original code), and both are saved as
``STEM.npz`` (the arrays) with ``STEM.json`` (the scale, classes and settings, and the digest
of the ``.npz``), which :func:`rcnn.files.read_arrays` checks together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from rcnn.data.annotations import check_class_names
from rcnn.errors import RcnnError
from rcnn.files import read_arrays, write_arrays


@dataclass
class LinearHeads:
    """``weights [K, D, ...]`` and ``offsets [K, ...]`` per class, on features times ``scale``."""

    weights: np.ndarray
    offsets: np.ndarray
    scale: float
    classes: list[str]
    info: dict = field(default_factory=dict)

    STEM: ClassVar[str]  # file names
    OFFSETS: ClassVar[str]  # what the offsets are called in the .npz
    MADE_BY: ClassVar[str]  # the command that writes them

    def save(self, folder: str | Path) -> None:
        meta = {"scale": self.scale, "classes": self.classes, **self.info}
        arrays = {"weights": self.weights, self.OFFSETS: self.offsets}
        write_arrays(folder, self.STEM, arrays, meta)

    @classmethod
    def load(cls, folder: str | Path):
        arrays, meta = read_arrays(
            folder, cls.STEM, cls.MADE_BY, ("weights", cls.OFFSETS), ("scale", "classes")
        )
        weights, offsets = arrays["weights"], arrays[cls.OFFSETS]
        classes = check_class_names(meta["classes"], str(Path(folder)))
        scale = meta["scale"]
        fits = (
            isinstance(scale, (int, float)) and np.isfinite(scale) and scale > 0
            and weights.dtype.kind == "f" and offsets.dtype.kind == "f"
            and weights.ndim in (2, 3) and len(weights) == len(classes) == len(offsets)
            and np.isfinite(weights).all() and np.isfinite(offsets).all()
        )  # fmt: skip
        if not fits:
            raise RcnnError(
                f"{folder}: its arrays {list(weights.shape)} / {list(offsets.shape)} and scale "
                f"{scale!r} do not fit its {len(classes)} classes (damaged?); run "
                f"`{cls.MADE_BY}` again"
            )
        info = {k: v for k, v in meta.items() if k not in ("scale", "classes")}
        return cls(weights, offsets, float(scale), classes, info)
