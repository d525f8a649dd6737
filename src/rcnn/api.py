"""The Python API: a trained R-CNN as a function of an image, the dataset readers and the
evaluation of result files.

    from rcnn import Detector
    det = Detector.load("OUT/run", scorer="svm", bbox_reg=True)
    result = det("street.jpg")           # a path, an RGB uint8 array or a PIL image
    for result in det.detect_many(["a.jpg", "b.jpg"]):  # a pool of processes for all
    result.boxes, result.scores, result.labels, result.names

Boxes are ``x1, y1, x2, y2`` in pixels, ``x2``/``y2`` exclusive (the project's convention).
Errors a user can cause are raised as :class:`rcnn.RcnnError` (or ``OSError`` for files),
with the command line's messages. Nothing here imports torch until a detector is loaded.
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
import os
import tempfile
from collections import deque
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

    def __init__(self, core, classes: list[str], exif: bool = True):
        self._core = core
        self.classes = list(classes)
        self.exif = exif

    @classmethod
    def load(
        cls,
        model: str | Path,
        scorer: str = "softmax",
        bbox_reg: bool | str | Path = False,
        svm: str | Path | None = None,
        classes: list[str] | str | None = None,
        score_thresh: float | None = None,
        nms: float = 0.3,
        max_per_image: int = 100,
        device: str = "auto",
        amp: bool | None = None,
        batch: int = 0,
        mode: str = "fast",
        cache_dir: str | Path | None = None,
        workers: int = 0,
        exif: bool = True,
    ) -> Detector:
        """A detector from a run folder (its ``best.pt``), a checkpoint, a ``model.pth`` with
        ``classes``, or a ``.onnx`` file of ``rcnn export`` (run by onnxruntime, without torch;
        its scorer, heads, thresholds and caps are those it was exported with); the same
        defaults as ``rcnn detect``.

        Args:
            scorer: ``softmax`` (the fine-tuned network) or ``svm`` (the SVMs in ``svm``,
                default the run's ``svm/``).
            bbox_reg: ``True`` for the run's box regressors (``RUN/bbox``), or their folder.
            classes: the class names in training order (one name may be a string).
            score_thresh: boxes scoring less are dropped (default 0.6 for softmax, 0 for SVMs).
            nms: IoU above which a lower-scored box of a class is suppressed.
            max_per_image: best boxes kept (0 = all).
            device, amp, batch: where and how the network runs (``auto``: CUDA when present).
            mode: Selective Search's strategy; ``cache_dir`` its cache (default: the
                project's), ``workers`` its processes (0 = one per core).
            exif: turn a file or PIL image upright by its EXIF orientation first (boxes are in
                the upright frame); ``False`` keeps the pixels as stored.
        """
        from rcnn.detection.config import DetectorConfig
        from rcnn.detection.exported import is_exported, open_exported
        from rcnn.runtime.config import InferenceConfig

        model = _path(model, "model", "a run folder, a checkpoint, a model.pth or an .onnx file")
        svm = _path(svm, "svm", "the SVMs' folder") if svm else None
        if is_exported(model):  # `rcnn export`'s ONNX file: onnxruntime, no torch
            bbox_reg = bool(bbox_reg) and "exported"
        elif bbox_reg is True:
            from rcnn.heads.config import run_part

            bbox_reg = run_part(model, "bbox")
        bbox_reg = (
            _path(bbox_reg, "bbox_reg", "True or the box regressors' folder") if bbox_reg else None
        )
        if isinstance(classes, str):
            classes = [classes]
        cache_dir = _cache_dir(cache_dir)
        cfg = DetectorConfig(
            scorer=scorer,
            svm=svm,
            bbox_reg=bbox_reg,
            score_thresh=score_thresh,
            nms=nms,
            max_per_image=max_per_image,
            mode=mode,
            inference=InferenceConfig(device=device, batch=batch, amp=amp),
            workers=workers,
            cache_dir=cache_dir,
        )
        if is_exported(model):
            core = open_exported(model, cfg)
            return cls(core, core.classes, exif=bool(exif))
        from rcnn.detection.detector import Detector as Core
        from rcnn.modeling.checkpoint import load_model

        loaded = load_model(model, classes)
        return cls(Core(loaded, cfg), loaded.classes, exif=bool(exif))

    def __call__(self, image) -> Result:
        """The detections of one image: a file path, an RGB ``uint8`` array ``[H, W, 3]`` (or
        a grey ``[H, W]`` one) or a PIL image (of any mode: 16-bit and float ones are read as
        their files are)."""
        return next(iter(self.detect_many([image])))

    def detect_many(self, images: Iterable, batch_images: int = 8) -> Iterator[Result]:
        """The detections of each image, in order, ``batch_images`` at a time: a batch's
        proposals are searched together (by one pool of processes for the whole call, in
        parallel, and cached), then its images scored. Works at the top level of a script,
        in ``python -c`` and in a notebook alike (the search processes never import the
        caller's main module).

        Raises:
            RcnnError: for an image that cannot be read or taken, naming it, after the results
                of the images before it were yielded.
        """
        if (
            isinstance(batch_images, bool)
            or not isinstance(batch_images, numbers.Integral)
            or batch_images < 1
        ):
            raise RcnnError(f"batch_images must be a whole number >= 1, got {batch_images!r}")
        if isinstance(images, str | bytes | os.PathLike | np.ndarray) or _is_pil(images):
            raise RcnnError(
                "detect_many takes a list (or any iterable) of images; for one image call the "
                f"detector itself: det({type(images).__name__})"
            )
        try:
            stream = iter(images)
        except TypeError:
            raise RcnnError(
                f"detect_many takes a list (or any iterable) of images, not {type(images).__name__}"
            ) from None
        self._core.cfg = replace(self._core.cfg, chunk=int(batch_images))
        return self._detect(stream)

    def explain(self, image, annotation: str | Path | None = None):
        """One image's trip through the detector, stage by stage, as data: an
        :class:`rcnn.detection.explain.Explanation` with ``proposals [N, 4]``, their
        ``scores [N, K]`` per class, what NMS kept (``kept_rows``, ``kept_labels``,
        ``detections``: this detector's result for the image), each kept box ``before`` and
        ``after`` box regression, and the regions ``warped`` as the network sees them. With
        ``annotation`` (the image's VOC XML), ``truth`` holds the proposals' labels by the
        run's rules and the objects' best proposals. ``rcnn.detection.explain_figure.
        draw_explanation(ex, "explain.png")`` draws it as ``rcnn explain`` does."""
        from rcnn.detection.exported import ExportedDetector

        if isinstance(self._core, ExportedDetector):
            raise RcnnError(
                "Detector.explain needs the network's own stages (its scores before NMS, its "
                "warped regions), which an exported graph does not expose: load the run "
                "folder or checkpoint it was exported from"
            )
        from rcnn.detection.explain import explain_path

        # An annotation's boxes are of the stored pixels (as a dataset's are): with one the
        # image is read as stored, without one upright by its EXIF orientation (``exif``).
        exif = self.exif and annotation is None
        with tempfile.TemporaryDirectory(prefix="rcnn-") as scratch:
            read, given = _as_file(image, Path(scratch) / "image.png", exif)
            return explain_path(self._core, read, annotation, by_name=given is not None)

    def _detect(self, stream: Iterator) -> Iterator[Result]:
        with tempfile.TemporaryDirectory(prefix="rcnn-") as scratch:
            sent: deque = deque()  # (the file read, the path given or None) of each image
            stopped: list[BaseException] = []  # why the images ended early

            def files():
                # Runs a chunk ahead, on the detector's thread: an image it cannot take ends
                # the stream, and is raised once the images before it were detected.
                for i in itertools.count():
                    try:
                        image = next(stream)
                        read, given = _as_file(image, Path(scratch) / f"{i}.png", self.exif)
                    except StopIteration:
                        return
                    except Exception as err:
                        stopped.append(err)
                        return
                    sent.append((read, given))
                    yield read

            with contextlib.closing(self._core.run(files(), False)) as found:
                for result, dets in found:
                    read, given = sent.popleft()
                    if dets is None:
                        raise RcnnError(result.error.replace(result.path, given or "the image"))
                    yield Result(dets.boxes, dets.scores, dets.labels,
                                 [self.classes[k - 1] for k in dets.labels.tolist()],
                                 tuple(result.size), given)  # fmt: skip
                    if read != given:
                        Path(read).unlink(missing_ok=True)
            if stopped:
                raise stopped[0]


def _path(value, name: str, what: str) -> str:
    """``value`` (a ``str`` or an ``os.PathLike``) as a ``str``, or an error naming ``name``."""
    if not isinstance(value, str | os.PathLike):
        raise RcnnError(f"{name} is {what} (a str or a path), not {value!r}")
    return os.fsdecode(os.fspath(value))


def _cache_dir(value) -> str | None:
    if value is None:
        return None
    path = _path(value, "cache_dir", "the proposal cache's folder")
    if os.path.exists(path) and not os.path.isdir(path):
        raise RcnnError(f"cache_dir {path} is a file, not a folder; name a folder for the cache")
    return path


def _is_pil(image) -> bool:
    return type(image).__module__.startswith("PIL.")


def _as_file(image, scratch: Path, exif: bool) -> tuple[str, str | None]:
    """A file to read ``image`` from and the path it was given as (``None`` for an array or a
    PIL image): the path itself, or the image written to ``scratch`` as a PNG (lossless: the
    same pixels), turned upright first by its EXIF orientation with ``exif``."""
    from rcnn.data.images import pil_to_rgb, upright_copy

    if isinstance(image, str | os.PathLike):
        path = _path(image, "an image", "a path")
        return (upright_copy(path, scratch) if exif else path), path
    if _is_pil(image):
        image = pil_to_rgb(image, exif)
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
    return str(scratch), None


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
