"""``rcnn detect``: the detector over image files and folders, with pictures and a JSON-lines
file of every detection."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2

from rcnn.detection.detector import Detector, DetectorConfig
from rcnn.detection.draw import draw_detections
from rcnn.errors import RcnnError
from rcnn.files import atomic_write_bytes, output_lock
from rcnn.modeling.trained import load_model

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def collect_images(inputs: list[str]) -> list[str]:
    """Image files given directly or found (not recursively) in given folders, in order."""
    paths = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                logger.warning("%s: no image files (%s)", path, ", ".join(sorted(IMAGE_SUFFIXES)))
            paths += [str(p) for p in found]
        elif path.is_file():
            paths.append(str(path))
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
    if not paths:
        raise RcnnError(f"no image to detect in {' '.join(inputs)}")
    return paths


def picture_names(paths: list[str]) -> list[str]:
    """``stem.jpg`` for each image, made unique when two folders hold the same name."""
    names, seen = [], {}
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.jpg" if seen[stem] == 1 else f"{stem}-{seen[stem]}.jpg")
    return names


def run_detect(
    model: str,
    inputs: list[str],
    out: str,
    cfg: DetectorConfig,
    classes: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Detects objects in every image; writes ``OUT/NAME.jpg`` pictures and
    ``OUT/detections.jsonl`` (one line per image: its path, size and detections with the box
    in the project convention, the class and the score)."""
    paths = collect_images(inputs)
    out_dir = Path(out)
    if (out_dir / "detections.jsonl").exists() and not overwrite:
        raise RcnnError(
            f"--out {out_dir} already holds detections.jsonl; pass --overwrite to replace it"
        )
    loaded = load_model(model, classes)
    detector = Detector(loaded, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines, skipped, total = [], [], 0
    with output_lock(out_dir, "rcnn detect"):
        names = dict(zip(paths, picture_names(paths), strict=True))
        for result, dets in detector.run(paths, progress):
            if dets is None:
                logger.warning("skipped %s", result.error)
                skipped.append(result.error)
                continue
            picture = draw_detections(cv2.imread(result.path), dets, loaded.classes)
            atomic_write_bytes(out_dir / names[result.path], _jpeg(picture))
            total += len(dets)
            lines.append(json.dumps(_record(result, dets, loaded.classes)))
        atomic_write_bytes(out_dir / "detections.jsonl", "".join(f"{x}\n" for x in lines).encode())
    return {"images": len(lines), "detections": total, "skipped": skipped, "out": str(out_dir)}


def _record(result, dets, classes: list[str]) -> dict:
    return {
        "image": str(Path(result.path).resolve()),
        "width": result.size[0],
        "height": result.size[1],
        "detections": [
            {"box": [round(float(v), 2) for v in box], "class": classes[k - 1], "score": float(s)}
            for box, k, s in zip(dets.boxes, dets.labels.tolist(), dets.scores, strict=True)
        ],
    }


def _jpeg(image) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RcnnError("could not encode a detection picture as JPEG")
    return data.tobytes()
