"""``rcnn detect``: the detector over image files and folders, with pictures and a JSON-lines
file of every detection.

Pictures and ``detections.jsonl`` are made in a staging folder inside ``--out`` and moved in
when every image is done: an interrupted run leaves the previous results as they were, and
``--overwrite`` replaces the previous run's pictures (those its ``detections.jsonl`` names), not
only those of the same names. Without ``--overwrite`` no file in ``--out`` is replaced: a file
of a picture's name there (a dataset's ``JPEGImages/``, say) refuses the run before any work,
naming it.

An image file's EXIF orientation is applied first (unless ``exif`` is off): an image stored
sideways is detected, recorded and drawn upright, from a PNG copy of its upright pixels in the
staging folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import cv2

from rcnn.data.images import read_image, upright_copy
from rcnn.detection.detector import Detector, DetectorConfig
from rcnn.detection.draw import draw_detections
from rcnn.detection.exported import is_exported, open_exported
from rcnn.errors import ConfigError, RcnnError
from rcnn.files import (
    atomic_write_bytes,
    is_regular_file,
    output_dir,
    output_lock,
    remove_temporaries,
)
from rcnn.modeling.checkpoint import load_model

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
RESULTS = "detections.jsonl"
NAME_MAX = 255  # bytes: a longer picture name has its image's stem cut
JPEG_MAX_SIDE = 65_500  # libjpeg's largest side


def collect_images(inputs: list[str]) -> list[str]:
    """Image files given directly or found (not recursively) in given folders, in order, each
    once. Only plain files are taken: a FIFO or a device behind an image name is skipped with
    a warning (or, given directly, refused), never read."""
    paths, seen = [], set()
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            odd = [p for p in found if not is_regular_file(p)]
            for p in odd:
                logger.warning("%s: not a regular file, skipped", p)
            found = [p for p in found if p not in odd]
            if not found:
                logger.warning("%s: no image files (%s)", path, ", ".join(sorted(IMAGE_SUFFIXES)))
        elif is_regular_file(path):
            found = [path]
        elif path.exists():
            raise RcnnError(f"{path}: not a regular file or folder")
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
        for p in found:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                paths.append(str(p))
    if not paths:
        raise RcnnError(f"no image to detect in {' '.join(inputs)}")
    return paths


def picture_names(paths: list[str]) -> list[str]:
    """``stem.jpg`` for each image, made unique (``stem-2.jpg``, ...) when names meet; the
    stem is cut (to whole characters) where the name would pass :data:`NAME_MAX` bytes."""
    names, used = [], set()
    for path in paths:
        stem = Path(path).stem
        name, n = _name(stem, ".jpg"), 1
        while name.lower() in used:  # case-insensitive file systems would merge them too
            n += 1
            name = _name(stem, f"-{n}.jpg")
        used.add(name.lower())
        names.append(name)
    return names


def _name(stem: str, tail: str) -> str:
    room = NAME_MAX - len(os.fsencode(tail))
    if len(os.fsencode(stem)) > room:
        stem = os.fsencode(stem)[:room].decode("utf-8", "ignore")
    return stem + tail


def run_detect(
    model: str,
    inputs: list[str],
    out: str,
    cfg: DetectorConfig,
    classes: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    exif: bool = True,
) -> dict:
    """Detects objects in every image (turned upright by its EXIF orientation with ``exif``);
    writes ``OUT/NAME.jpg`` pictures and ``OUT/detections.jsonl`` (one line per image: its
    path, picture, size and detections with the box in the project convention, the class and
    the score)."""
    paths = collect_images(inputs)
    out_dir = Path(out)
    names = dict(zip(paths, picture_names(paths), strict=True))
    _check_out(out_dir, paths, names.values(), overwrite)
    if is_exported(model):  # `rcnn export`'s ONNX file, run by onnxruntime
        detector = open_exported(model, cfg)
    else:
        detector = Detector(load_model(model, classes), cfg)
    out_dir = output_dir(out_dir)
    lines, skipped, total = [], [], 0
    with output_lock(out_dir, "rcnn detect"):
        # Again: another run may have finished meanwhile.
        _check_out(out_dir, paths, names.values(), overwrite)
        remove_temporaries(out_dir)
        for stale in out_dir.glob(".detect-*"):  # a killed run's staging folder
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".detect-", dir=out_dir))
        try:
            read = _upright_files(paths, staging / "upright") if exif else {p: p for p in paths}
            given = {file: path for path, file in read.items()}
            for result, dets in detector.run(list(read.values()), progress):
                path = given[result.path]
                try:
                    picture = _picture(result, dets, detector.classes)
                except RcnnError as err:  # this image alone: the others go on
                    logger.warning("skipped %s", str(err).replace(result.path, path))
                    skipped.append(str(err).replace(result.path, path))
                    continue
                atomic_write_bytes(staging / names[path], picture)
                total += len(dets)
                record = _record(result, path, names[path], dets, detector.classes)
                lines.append(json.dumps(record))
            atomic_write_bytes(staging / RESULTS, "".join(f"{x}\n" for x in lines).encode())
            _publish(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return {"images": len(lines), "detections": total, "skipped": skipped, "out": str(out_dir)}


def _upright_files(paths: list[str], folder: Path) -> dict[str, str]:
    """The file each image is read from: itself, or (stored sideways by its EXIF orientation)
    an upright PNG copy in ``folder``."""
    return {path: upright_copy(path, folder / f"{i}.png") for i, path in enumerate(paths)}


def _check_out(out_dir: Path, paths: list[str], pictures, overwrite: bool) -> None:
    """Refuses an ``--out`` where the pictures would replace inputs, or, without
    ``overwrite``, earlier results or a file ``rcnn detect`` did not write."""
    if (out_dir / RESULTS).exists() and not overwrite:
        raise RcnnError(f"--out {out_dir} already holds {RESULTS}; pass --overwrite to replace it")
    if not out_dir.is_dir():
        return
    inside = [p for p in paths if Path(p).resolve().parent == out_dir.resolve()]
    if inside:
        raise ConfigError(
            f"--out {out_dir} holds the input image {inside[0]}: pictures written there "
            "could replace inputs; choose another folder for the output"
        )
    if overwrite:
        return
    # Without --overwrite there is no earlier detections.jsonl (refused above): any file of a
    # picture's name is another's. Compared case-insensitively, as some file systems do.
    existing = {p.name.lower(): p for p in out_dir.iterdir()}
    for name in pictures:
        found = existing.get(name.lower())
        if found is not None:
            raise ConfigError(
                f"--out {out_dir} already holds {found.name}, which rcnn detect did not write "
                f"and the picture {name} would replace; choose another folder for the output "
                "or pass --overwrite to replace it"
            )


def _previous_pictures(out_dir: Path) -> list[str]:
    """The pictures the run that wrote ``OUT/detections.jsonl`` made (its ``picture`` fields;
    older files name only the images, whose picture names follow from them)."""
    path = out_dir / RESULTS
    if not path.is_file():
        return []
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if all("picture" in r for r in records):
            names = [r["picture"] for r in records]
        else:
            names = picture_names([r["image"] for r in records])
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        logger.warning("%s is unreadable: its pictures are left in place", path)
        return []
    return [n for n in names if isinstance(n, str) and Path(n).name == n and n.endswith(".jpg")]


def _publish(staging: Path, out_dir: Path) -> None:
    """Replaces the previous run's pictures and results with the staged ones, results last."""
    for name in _previous_pictures(out_dir):
        (out_dir / name).unlink(missing_ok=True)
    for picture in sorted(staging.glob("*.jpg")):
        os.replace(picture, out_dir / picture.name)
    os.replace(staging / RESULTS, out_dir / RESULTS)


def _record(result, path: str, picture: str, dets, classes: list[str]) -> dict:
    return {
        "image": str(Path(path).resolve()),
        "picture": picture,
        "width": result.size[0],
        "height": result.size[1],
        "detections": [
            {"box": [round(float(v), 2) for v in box], "class": classes[k - 1], "score": float(s)}
            for box, k, s in zip(dets.boxes, dets.labels.tolist(), dets.scores, strict=True)
        ],
    }


def _picture(result, dets, classes: list[str]) -> bytes:
    """The JPEG of an image with its detections drawn.

    Raises:
        RcnnError: naming the image, which could not be detected or drawn.
    """
    if dets is None:
        raise RcnnError(result.error)
    try:
        image = read_image(result.path)  # read again since its proposals: it may have changed
    except OSError as err:
        raise RcnnError(f"{result.path}: cannot read image ({err.strerror or err})") from None
    if image is None:
        raise RcnnError(f"{result.path}: no longer readable")
    height, width = image.shape[:2]
    if max(width, height) > JPEG_MAX_SIDE:
        raise RcnnError(
            f"{result.path}: {width}x{height} pixels, too large a side for a JPEG picture (at "
            f"most {JPEG_MAX_SIDE:,})"
        )
    picture = draw_detections(image, dets, classes)
    ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RcnnError(f"{result.path}: its picture could not be encoded as JPEG")
    return data.tobytes()
