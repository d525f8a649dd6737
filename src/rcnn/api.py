"""The Python API: a trained R-CNN as a function of an image, the dataset readers and the
evaluation of result files.

    from rcnn import Detector
    det = Detector.load("OUT/run", scorer="svm", bbox_reg=True)
    result = det("street.jpg")           # a path, an RGB uint8 array or a PIL image
    result.boxes, result.scores, result.labels, result.names

Boxes are ``x1, y1, x2, y2`` in pixels, ``x2``/``y2`` exclusive (the project's convention).
Errors a user can cause are raised as :class:`rcnn.RcnnError` (or ``OSError`` for files),
with the command line's messages. Nothing here imports torch until a detector is loaded.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rcnn.errors import RcnnError


@dataclass
class Result:
    """One image's detections, best first."""

    boxes: np.ndarray  # float32 [D, 4], x1 y1 x2 y2
    scores: np.ndarray  # float32 [D]
    labels: np.ndarray  # int64 [D], 1..K (0 is background)
    names: list[str]  # the class name of each detection
    size: tuple[int, int]  # the image's width, height
    path: str | None = None  # the image file (None for an array or a PIL image)

    def __len__(self) -> int:
        return len(self.scores)


class Detector:
    """A trained R-CNN detector. Build it with :meth:`load`."""

    def __init__(self, core, classes: list[str]):
        self._core = core
        self.classes = list(classes)

    @classmethod
    def load(
        cls,
        model: str | Path,
        scorer: str = "softmax",
        bbox_reg: bool | str | Path = False,
        svm: str | Path | None = None,
        classes: list[str] | None = None,
        score_thresh: float | None = None,
        nms: float = 0.3,
        max_per_image: int = 100,
        device: str = "auto",
        amp: bool | None = None,
        batch: int = 0,
        mode: str = "fast",
        cache_dir: str | Path | None = None,
        workers: int = 0,
    ) -> Detector:
        """A detector from a run folder (its ``best.pt``), a checkpoint, a ``model.pth`` with
        ``classes``, or a ``.onnx`` file of ``rcnn export`` (run by onnxruntime, without torch;
        its scorer, heads, thresholds and caps are those it was exported with); the same
        defaults as ``rcnn detect``.

        Args:
            scorer: ``softmax`` (the fine-tuned network) or ``svm`` (the SVMs in ``svm``,
                default the run's ``svm/``).
            bbox_reg: ``True`` for the run's box regressors (``RUN/bbox``), or their folder.
            score_thresh: boxes scoring less are dropped (default 0.6 for softmax, 0 for SVMs).
            nms: IoU above which a lower-scored box of a class is suppressed.
            max_per_image: best boxes kept (0 = all).
            device, amp, batch: where and how the network runs (``auto``: CUDA when present).
            mode: Selective Search's strategy; ``cache_dir`` its cache (default: the
                project's), ``workers`` its processes (0 = one per core).
        """
        from rcnn.detection.config import DetectorConfig
        from rcnn.detection.exported import is_exported, open_exported
        from rcnn.runtime.config import InferenceConfig

        if is_exported(model):  # `rcnn export`'s ONNX file: onnxruntime, no torch
            bbox_reg = bool(bbox_reg) and "exported"
        elif bbox_reg is True:
            from rcnn.heads.config import run_part

            bbox_reg = run_part(model, "bbox")
        cfg = DetectorConfig(
            scorer=scorer,
            svm=str(svm) if svm else None,
            bbox_reg=str(bbox_reg) if bbox_reg else None,
            score_thresh=score_thresh,
            nms=nms,
            max_per_image=max_per_image,
            mode=mode,
            inference=InferenceConfig(device=device, batch=batch, amp=amp),
            workers=workers,
            cache_dir=str(cache_dir) if cache_dir else None,
        )
        if is_exported(model):
            core = open_exported(model, cfg)
            return cls(core, core.classes)
        from rcnn.detection.detector import Detector as Core
        from rcnn.modeling.checkpoint import load_model

        loaded = load_model(model, classes)
        return cls(Core(loaded, cfg), loaded.classes)

    def __call__(self, image) -> Result:
        """The detections of one image: a file path, an RGB ``uint8`` array ``[H, W, 3]`` (or
        a grey ``[H, W]`` one) or a PIL image."""
        return next(iter(self.detect_many([image])))

    def detect_many(self, images: Iterable, batch_images: int = 8) -> Iterator[Result]:
        """The detections of each image, in order, ``batch_images`` at a time: a batch's
        proposals are searched together (in parallel, and cached), then its images scored.
        An image that cannot be read raises :class:`rcnn.RcnnError` naming it."""
        if batch_images < 1:
            raise RcnnError(f"batch_images must be >= 1, got {batch_images}")
        if isinstance(images, str | os.PathLike | np.ndarray) or hasattr(images, "getpixel"):
            raise RcnnError(
                "detect_many takes a list (or any iterable) of images; for one image call the "
                f"detector itself: det({type(images).__name__})"
            )
        core = self._core
        core.cfg = replace(core.cfg, chunk=batch_images)
        batch: list = []
        for image in images:
            batch.append(image)
            if len(batch) == batch_images:
                yield from self._batch(batch)
                batch = []
        if batch:
            yield from self._batch(batch)

    def _batch(self, images: list) -> list[Result]:
        with tempfile.TemporaryDirectory(prefix="rcnn-") as scratch:
            paths, given = [], []
            for i, image in enumerate(images):
                path, is_file = _as_file(image, Path(scratch) / f"{i}.png")
                paths.append(path)
                given.append(path if is_file else None)
            results = []
            for (result, dets), path in zip(self._core.run(paths, False), given, strict=True):
                if dets is None:
                    raise RcnnError(result.error.replace(result.path, path or "the image"))
                results.append(Result(dets.boxes, dets.scores, dets.labels,
                                      [self.classes[k - 1] for k in dets.labels.tolist()],
                                      tuple(result.size), path))  # fmt: skip
            return results


def _as_file(image, scratch: Path) -> tuple[str, bool]:
    """A path to read ``image`` from: the path itself, or an array or PIL image written to
    ``scratch`` as a PNG (lossless: the same pixels as the array)."""
    if isinstance(image, str | Path):
        return str(image), True
    if type(image).__module__.startswith("PIL."):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise RcnnError(
            f"an image is a path, a numpy array or a PIL image, not {type(image).__name__}"
        )
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))
    ):
        raise RcnnError(
            f"an image array must be uint8 [H, W, 3] RGB (or [H, W] grey), got "
            f"{image.dtype} {list(image.shape)}"
        )
    if min(image.shape[:2]) < 1:
        raise RcnnError(f"an image array must have pixels, got shape {list(image.shape)}")
    import cv2

    if image.ndim == 3:
        image = cv2.cvtColor(image[:, :, :3], cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(scratch), image):
        raise RcnnError(f"the image array could not be written to {scratch}")
    return str(scratch), False


def open_dataset(voc_root: str | Path | None = None, coco: str | Path | None = None,
                 images: str | Path | None = None):  # fmt: skip
    """The reader of a VOC folder, or of COCO instances files and their images (``{split}``
    in either is replaced by a split's name): ``ids(split)``, ``annotation(id)`` (its
    ``objects``, each with ``name``, ``box``, ``difficult``), ``image_path(id)``."""
    from rcnn.data.readers import open_dataset as open_reader

    return open_reader(
        str(voc_root) if voc_root else None, str(coco) if coco else None,
        str(images) if images else None,
    )  # fmt: skip


def evaluate_detections(
    dets: str | Path,
    voc_root: str | Path | None = None,
    coco: str | Path | None = None,
    images: str | Path | None = None,
    split: str = "test",
    classes: list[str] | None = None,
    out: str | Path | None = None,
    analyze: bool = False,
) -> dict:
    """Scores another detector's output on a split by the VOC devkit's rules and COCO's, as
    ``rcnn test --dets`` does: ``dets`` is a folder of devkit result files
    (``comp4_det_{split}_{class}.txt``) or a COCO results file (``.json``, then ``out`` is
    required). Writes ``metrics.json`` and ``pr.png`` to ``out`` (default: the folder) and
    returns the metrics: per class ``ap_07`` (11-point) and ``ap``, ``map_07``, ``map``,
    ``coco``."""
    from rcnn.data.annotations import check_split_name
    from rcnn.evaluation.result_files import evaluate_result_files

    check_split_name(split)
    dataset = open_dataset(voc_root, coco, images)
    return evaluate_result_files(str(dets), dataset, split, classes, str(out) if out else None,
                                 analyze=analyze)  # fmt: skip
