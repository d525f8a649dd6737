"""One image's detections: what the detector, in torch or exported, gives for an image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """One image's detections, best first."""

    boxes: np.ndarray  # float32 [D, 4], project convention
    scores: np.ndarray  # float32 [D]
    labels: np.ndarray  # int64 [D], 1..K

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
