"""Shared fixtures: tiny VOC trees and runs built on the fly, never downloaded."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from tests.helpers import draw_scene, tiny_config, write_xml


@pytest.fixture(autouse=True, scope="session")
def isolated_environment(tmp_path_factory):
    """Every test runs with float32 as the automatic precision (as on a CPU without native
    bfloat16), whatever this machine has, so that no test depends on it, and with a proposal
    cache of its own session, so that a test that forgets --cache-dir never writes to the
    user's cache. Processes the tests start inherit both."""
    patch = pytest.MonkeyPatch()
    patch.setenv("RCNN_NATIVE_BF16", "0")
    patch.setenv("RCNN_CACHE_DIR", str(tmp_path_factory.mktemp("rcnn-cache")))
    yield
    patch.undo()


@pytest.fixture(params=["0", "1"], ids=["native-bf16-off", "native-bf16-on"])
def native_bf16(request, monkeypatch) -> bool:
    """For the tests of the automatic precision: run once as on a CPU without native bfloat16
    and once as on one with it (RCNN_NATIVE_BF16, read on every call), whatever this CPU is."""
    monkeypatch.setenv("RCNN_NATIVE_BF16", request.param)
    return request.param == "1"


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
    """A tiny network trained one epoch on ``prepared`` (cars), built once per test session:
    for the tests that need some model, not a good one. Tests that write into a run folder
    take a copy (``tests.helpers.copy_run``)."""
    from rcnn.training.train import run_train

    out = prepared.parent / "one-epoch-run"
    run_train(tiny_config(prepared, out, epochs=1, workers=1, lr=1e-4))
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A synthetic VOC set (also as COCO files) with a test split, its proposal cache, and a
    tiny network fine-tuned on it for a few epochs: a model that finds the cars."""
    from rcnn.data.config import PrepareConfig, ProposalConfig
    from rcnn.data.prepare import run_prepare
    from rcnn.data.synth import make_synthetic_voc
    from rcnn.training.train import run_train

    root = tmp_path_factory.mktemp("detection")
    make_synthetic_voc(
        root / "voc", 30, 3, (256, 192), val_fraction=0.2, test_fraction=0.2, coco=True
    )
    cache = str(root / "cache")
    run_prepare(PrepareConfig(str(root / "voc"), str(root / "regions"), workers=1,
                              proposals=ProposalConfig("fast"), cache_dir=cache,
                              progress=False))  # fmt: skip
    run_train(tiny_config(root / "regions", root / "run", epochs=3, workers=2))
    return root
