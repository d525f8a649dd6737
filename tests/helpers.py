"""What several test modules share: tiny training settings, scenes drawn on the fly, and the
ways tests launch processes (a Python snippet, torchrun)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

# A network that trains in a second an epoch on the tests' tiny sets: AlexNet's shape at ~0.1M
# parameters (rcnn.modeling.backbones). AlexNet itself is trained only where it is the point.
TINY = {
    "backbone": "alexnet_tiny",
    "weights": "none",
    "input_size": 64,
    "num_pos": 4,
    "num_neg": 12,
    "workers": 0,
    "val_batch": 64,
    "progress": False,
    "device": "cpu",
    "optimizer": "adam",
    "lr": 1e-3,
}
# The same settings as `rcnn train` flags.
TINY_FLAGS = [
    "--backbone", "alexnet_tiny", "--weights", "none", "--input-size", "64", "--num-pos", "4",
    "--num-neg", "12", "--workers", "0", "--optimizer", "adam", "--lr", "1e-3",
    "--device", "cpu", "--no-progress",
]  # fmt: skip


def tiny_config(data, out, **changes):
    """A :class:`TrainConfig` of :data:`TINY` training on ``data`` into ``out``."""
    from rcnn.training.config import TrainConfig

    return TrainConfig(data=str(data), out=str(out), **{**TINY, **changes})


def copy_run(run: Path, to: Path) -> Path:
    """A copy of a run folder whose files are hard links: files are replaced by renaming,
    never written in place, so a test may write into the copy."""
    shutil.copytree(run, to, copy_function=os.link)
    return to


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


def write_coco(path: Path, images, annotations, categories=({"id": 1, "name": "car"},)) -> Path:
    """Writes a COCO instances file of these entries (see :func:`coco_image`)."""
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": list(categories)})
    )
    return path


def coco_image(i, name=None, size=(96, 72)) -> dict:
    """A COCO image entry: id ``i``, file ``im{i}.jpg`` unless named."""
    return {"id": i, "file_name": name or f"im{i}.jpg", "width": size[0], "height": size[1]}


def coco_annotation(i, image_id, bbox, category=1, crowd=0) -> dict:
    """A COCO annotation entry; ``bbox`` is COCO's ``[x, y, w, h]``."""
    return {"id": i, "image_id": image_id, "category_id": category, "bbox": bbox, "iscrowd": crowd}


def draw_scene(seed: int, size=(96, 72), boxes=()) -> np.ndarray:
    """A BGR image with a noisy background and a solid block per box (0-based, exclusive)."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = rng.integers(60, 120, size=(height, width, 3), dtype=np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        image[y1:y2, x1:x2] = (40 + 60 * i, 200, 240 - 50 * i)
    return image


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header declares ``width`` x ``height`` RGB pixels
    (its data is one row of zeros): what a decompression bomb looks like before decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    row = zlib.compress(b"\0" * (1 + 3 * width))  # the filter byte, then the pixels
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def run_python(code: str) -> str:
    """Runs ``code`` in a new Python process; returns what it printed."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def torchrun(*args: str, cwd: Path, env: dict | None = None, check: bool = True):
    """``torchrun --standalone --nproc_per_node=2 ARGS``: two processes, one thread each."""
    root = str(Path(__file__).parents[1])  # `tests.helpers` importable by a probe script
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *args]  # fmt: skip
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


PROBE = Path(__file__).with_name("torchrun_probe.py")


def torchrun_steps(steps: list[dict], folder: Path, env: dict | None = None) -> list[dict]:
    """Runs ``steps`` (see ``tests/torchrun_probe.py``) in one 2-process torchrun launch, one
    after the other in the same process group; returns each rank's ``{name: {rc, out, err}}``."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / "steps.json"
    plan.write_text(json.dumps(steps))
    torchrun(str(PROBE), str(plan), cwd=folder, env=env)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]


def same_files(a: Path, b: Path, names) -> None:
    """The files ``names`` of folders ``a`` and ``b`` hold the same bytes (the arrays of an
    ``.npz``, whose zip headers hold times)."""
    for name in names:
        if name.endswith(".npz"):
            x, y = np.load(a / name), np.load(b / name)
            assert sorted(x.files) == sorted(y.files), name
            for key in x.files:
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name}:{key}")
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def one_process(*argv: str) -> None:
    """``rcnn ARGV`` in this process with one thread, as each of torchrun's processes (whose
    OMP_NUM_THREADS=1 holds torch's kernels and the BLAS under numpy and scikit-learn): the
    same sums in the same order."""
    import torch
    from threadpoolctl import threadpool_limits

    from rcnn.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            assert main(list(argv)) == 0, argv
    finally:
        torch.set_num_threads(threads)
