"""An exported detector (``rcnn export``): its settings, the metadata it carries, and an ONNX
file run by onnxruntime, with Selective Search through OpenCV as ever. Nothing here imports
torch (nor OpenCV until it runs): a service that only detects needs numpy, OpenCV and
onnxruntime.

The graph (:mod:`rcnn.detection.export_graph`) takes one image, uint8 ``[H, W, 3]`` RGB, and
its proposals, float32 ``[N, 4]`` (``x1, y1, x2, y2``, ``x2``/``y2`` exclusive, ``N >= 1``),
and gives ``boxes`` float32 ``[D, 4]``, ``scores`` float32 ``[D]`` and ``labels`` int64
``[D]`` (``1..K``), best first. What it was made with is in its metadata: ONNX
``metadata_props`` (each value JSON), or the TorchScript file's extra file ``rcnn.json``.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rcnn.data.config import ProposalConfig
from rcnn.detection.config import DetectorConfig
from rcnn.detection.detections import Detections
from rcnn.errors import ConfigError, RcnnError
from rcnn.progress import progress_bar

if TYPE_CHECKING:
    from rcnn.data.proposals import ProposalResult

logger = logging.getLogger(__name__)

FORMAT = "rcnn-export-1"  # metadata "format": what a reader of these files expects
FORMATS = ("onnx", "torchscript")
OPSET = 17  # GridSample needs 16; NonMaxSuppression and the rest are older
EXTRA_FILE = "rcnn.json"  # the TorchScript file's metadata
INPUTS, OUTPUTS = ("image", "proposals"), ("boxes", "scores", "labels")
# What the graph holds fixed, by the flag that sets it (the metadata's keys).
FIXED = {"scorer": "--scorer", "bbox_reg": "--bbox-reg", "score_thresh": "--score-thresh",
         "nms": "--nms", "max_per_class": "--max-per-class",
         "max_per_image": "--max-per-image"}  # fmt: skip


@dataclass(frozen=True)
class ExportConfig:
    """``rcnn export``: the run's detector (``detector``: scorer, heads, thresholds, caps) as
    one ``format`` file at ``out``."""

    model: str
    out: str
    format: str = "onnx"
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    classes: list[str] | None = None  # for a plain state dict (model.pth)
    opset: int = OPSET
    overwrite: bool = False

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {FORMATS}, got {self.format!r}")
        if self.opset < 16:
            raise ConfigError(f"--opset must be >= 16 (GridSample), got {self.opset}")
        if Path(self.out).exists() and not self.overwrite:
            raise ConfigError(f"--out {self.out} already exists; pass --overwrite to replace it")
        if Path(self.out).is_dir():
            raise ConfigError(f"--out {self.out} is a folder; give a file name")


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` names an exported ONNX detector (by its suffix)."""
    return Path(path).suffix.lower() == ".onnx"


def decode_metadata(props: dict[str, str], path) -> dict:
    """The metadata of an exported file, checked: its values are JSON."""
    try:
        meta = {key: json.loads(value) for key, value in props.items()}
    except (TypeError, ValueError):
        meta = {}
    if meta.get("format") != FORMAT:
        raise RcnnError(
            f"{path}: not a detector of `rcnn export` (no {FORMAT!r} metadata); export it with "
            "`rcnn export RUN --out FILE.onnx`"
        )
    return meta


def check_fixed(meta: dict, cfg: DetectorConfig, path) -> None:
    """Refuses detector settings that differ from those the graph was exported with (a
    setting left at its default takes the graph's)."""
    defaults = DetectorConfig()
    for key, flag in FIXED.items():
        given, default = getattr(cfg, key), getattr(defaults, key)
        if key == "bbox_reg":
            given, default = given is not None, False
        if key == "score_thresh" and given is not None:
            given = float(given)
        if given != default and given != meta[key]:
            raise RcnnError(
                f"{path} was exported with {flag} {meta[key]}: its detections are fixed in the "
                f"graph; export the run again with {flag} {given}"
            )
    if cfg.svm is not None and meta["scorer"] != "svm":
        raise RcnnError(f"{path} scores by {meta['scorer']}: --svm applies to an SVM export")
    if cfg.keep_all and meta["score_thresh"] != float("-inf"):
        raise RcnnError(f"{path} drops boxes below {meta['score_thresh']}; export with --keep-all")


class ExportedModel:
    """An exported ONNX detector in onnxruntime: ``model(image, proposals)`` is an image's
    :class:`Detections`.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime's threads (0: its default, one per core).
    """

    def __init__(self, path: str | Path, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RcnnError(
                f"{path}: running an exported detector needs onnxruntime: "
                "pip install 'rcnn[export]'"
            ) from None
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: exported detector not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # its warnings are about graph rewrites, not ours
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RcnnError(f"{path}: not a readable ONNX model ({first})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta = decode_metadata(props, path)
        self.classes, self.path = list(self.meta["classes"]), str(path)

    def __call__(self, image: np.ndarray, proposals: np.ndarray) -> Detections:
        """Detections of an RGB uint8 ``[H, W, 3]`` image from its proposals ``[N, 4]``."""
        if len(proposals) == 0:
            return Detections.empty()
        feed = {"image": np.ascontiguousarray(image, np.uint8),
                "proposals": np.ascontiguousarray(proposals, np.float32)}  # fmt: skip
        boxes, scores, labels = self.session.run(list(OUTPUTS), feed)
        return Detections(boxes, scores, labels.astype(np.int64))


class ExportedDetector:
    """:class:`rcnn.detection.detector.Detector`'s ``run`` for an exported model: proposals
    from Selective Search (or ``cfg.proposals``), then the graph on each image."""

    def __init__(self, path: str | Path, cfg: DetectorConfig):
        if cfg.inference.device not in ("auto", "cpu"):
            raise ConfigError(f"--device {cfg.inference.device}: an exported model runs on the CPU")
        self.model = ExportedModel(path)
        check_fixed(self.model.meta, cfg, path)
        self.cfg, self.classes, self.source = cfg, self.model.classes, str(path)

    def run(
        self, paths: Iterable[str], progress: bool = True
    ) -> Iterator[tuple[ProposalResult, Detections | None]]:
        """Every image's detections, in order; ``None`` with ``result.error`` for an image
        that could not be read. ``paths`` may be any iterable (taken a chunk at a time)."""
        from rcnn.data.proposal_files import proposal_source  # OpenCV: imported when used

        proposals = ProposalConfig(
            self.cfg.mode, self.cfg.max_side, self.cfg.proposals, self.cfg.max_proposals
        )
        pool = proposal_source(proposals, self.cfg.cache_dir, self.cfg.workers)
        size = self.cfg.chunk or max(8, 2 * pool.workers)
        total = len(paths) if isinstance(paths, Sized) else None
        bar = progress_bar(total=total, enabled=progress, desc="detect", unit="img")
        remaining = iter(paths)
        with bar, pool:
            while group := list(itertools.islice(remaining, size)):
                for result in pool.compute(group, False):
                    yield self._detect(result)
                    bar.update(1)

    def _detect(self, result: ProposalResult) -> tuple[ProposalResult, Detections | None]:
        if result.error:
            return result, None
        if result.boxes is None or not len(result.boxes):
            return result, Detections.empty()
        image = read_rgb(result.path, tuple(result.size))
        if isinstance(image, str):  # why it could not be read
            return replace(result, error=image), None
        return result, self.model(image, result.boxes)


def read_rgb(path: str, size: tuple[int, int]) -> np.ndarray | str:
    """The image as RGB uint8, or why it cannot be used: unreadable, or not of the ``(width,
    height)`` its proposals were made for."""
    import cv2

    from rcnn.data.images import read_image

    try:
        image = read_image(path)
    except RcnnError as err:
        return str(err)
    except OSError as err:
        return f"{path}: cannot read image ({err.strerror or err})"
    if image is None:
        return f"{path}: not a readable image"
    if (image.shape[1], image.shape[0]) != size:
        return f"{path}: the image changed since its proposals were made"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def open_exported(path: str | Path, cfg: DetectorConfig) -> ExportedDetector:
    """The exported detector of ``path`` with ``cfg``'s proposals (its other settings must be
    those of the export, or defaults)."""
    return ExportedDetector(path, cfg)
