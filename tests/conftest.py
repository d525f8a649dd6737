"""Shared fixtures: tiny VOC trees written on the fly, never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

OUTSIDE_PRECISION = os.environ.get("RCNN_NATIVE_BF16")  # as `make test` sets it, or unset


@pytest.fixture(autouse=True, scope="session")
def float32_by_default():
    """The automatic precision is float32 everywhere in the tests (as on a CPU without native
    bfloat16), whatever this machine has, so that no test depends on it..."""
    patch = pytest.MonkeyPatch()
    patch.setenv("RCNN_NATIVE_BF16", "0")
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def outside_precision_when_marked(request, monkeypatch):
    """...but in the tests marked ``precision``, which take RCNN_NATIVE_BF16 from outside:
    `make test` runs them with 0 and with 1."""
    if request.node.get_closest_marker("precision") is None:
        return
    if OUTSIDE_PRECISION is None:
        monkeypatch.delenv("RCNN_NATIVE_BF16")
    else:
        monkeypatch.setenv("RCNN_NATIVE_BF16", OUTSIDE_PRECISION)


def write_xml(path: Path, filename: str, size, objects) -> None:
    """Writes a VOC XML; ``objects`` holds (name, (xmin, ymin, xmax, ymax) 1-based, difficult)."""
    parts = [
        "<annotation>",
        f"<filename>{filename}</filename>",
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>",
    ]
    for name, (xmin, ymin, xmax, ymax), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><truncated>0</truncated>"
            f"<difficult>{int(difficult)}</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    path.write_text("\n".join(parts))


def draw_scene(seed: int, size=(96, 72), boxes=()) -> np.ndarray:
    """A BGR image with a noisy background and a solid block per box (0-based, exclusive)."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = rng.integers(60, 120, size=(height, width, 3), dtype=np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        image[y1:y2, x1:x2] = (40 + 60 * i, 200, 240 - 50 * i)
    return image


@pytest.fixture
def make_voc(tmp_path):
    """Builds a VOC tree. Each image spec: (id, split, [(name, 0-based box, difficult)])."""

    def build(specs, root=None, class_files=("car",), size=(96, 72)):
        root = Path(root or tmp_path / "voc")
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        splits: dict[str, list[str]] = {}
        for n, (image_id, split, objects) in enumerate(specs):
            splits.setdefault(split, []).append(image_id)
            boxes = [box for _, box, _ in objects]
            cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), draw_scene(n, size, boxes))
            voc_objects = [(name, (b[0] + 1, b[1] + 1, b[2], b[3]), d) for name, b, d in objects]
            write_xml(
                root / "Annotations" / f"{image_id}.xml", f"{image_id}.jpg", size, voc_objects
            )
        main = root / "ImageSets" / "Main"
        for split, ids in splits.items():
            (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
            for cls in class_files:
                lines = []
                for image_id, s, objects in specs:
                    if s != split:
                        continue
                    names = [(name, d) for name, _, d in objects if name == cls]
                    flag = 1 if any(not d for _, d in names) else (0 if names else -1)
                    lines.append(f"{image_id} {flag:2d}\n")
                (main / f"{cls}_{split}.txt").write_text("".join(lines))
        return root

    return build


@pytest.fixture
def small_voc(make_voc):
    """Four train and two val images with one or two cars each."""
    specs = [
        ("000001", "train", [("car", (10, 10, 50, 40), False)]),
        ("000002", "train", [("car", (40, 20, 90, 60), False), ("dog", (5, 5, 30, 30), False)]),
        ("000003", "train", [("car", (5, 30, 45, 70), False), ("car", (60, 5, 90, 30), True)]),
        ("000004", "train", [("dog", (20, 20, 60, 60), False)]),
        ("000005", "val", [("car", (20, 15, 70, 55), False)]),
        ("000006", "val", [("car", (8, 8, 40, 40), False)]),
    ]
    return make_voc(specs)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """A tiny prepared region dataset (train and val stores), built once per test session."""
    from rcnn.data.config import PrepareConfig, ProposalConfig
    from rcnn.data.prepare import run_prepare
    from rcnn.data.synth import make_synthetic_voc

    root = tmp_path_factory.mktemp("prepared")
    make_synthetic_voc(root / "voc", 8, seed=1, image_size=(128, 96))
    cfg = PrepareConfig(
        str(root / "voc"),
        str(root / "regions"),
        workers=1,
        progress=False,
        proposals=ProposalConfig("fast"),
        cache_dir=str(root / "cache"),
    )
    run_prepare(cfg)
    return root / "regions"


@pytest.fixture(scope="session")
def one_epoch_model(prepared):
    """A network trained one epoch on ``prepared`` (cars), built once per test session: for
    tests that need some model, not a good one."""
    from rcnn.training.config import TrainConfig
    from rcnn.training.train import run_train

    out = prepared.parent / "one-epoch-run"
    run_train(TrainConfig(data=str(prepared), out=str(out), weights="none", epochs=1,
                          input_size=64, num_pos=4, num_neg=12, workers=1, device="cpu",
                          optimizer="adam", lr=1e-4, progress=False))  # fmt: skip
    return out
