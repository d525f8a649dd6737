"""``rcnn visualize``: what pool5 units respond to, as the R-CNN paper's Figure 4 shows it.

A pool5 unit (a channel at one cell of the ``C x H x W`` map; AlexNet's is 256 x 6 x 6) is used
as an object detector of its own: its activation on every region of a split, sorted, with
non-maximum suppression within each image (IoU 0.3), gives the regions it likes best. Each is
drawn as the network saw it (warped, with its context) with the unit's receptive field (the
input pixels its value depends on) and the activation. The paper picked
its six units by hand; by default this picks the units that fire most strongly over the split,
one a channel, or takes ``--unit C Y X``.

Writes ``OUT/units.png`` (a row a unit) and ``OUT/units.json`` (the same regions).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from rcnn.data.annotations import check_split_name
from rcnn.data.feeders import chunks, make_feeder
from rcnn.data.regions import load_split
from rcnn.data.warps import ImageStore, mean_fill, warp_region
from rcnn.errors import ConfigError
from rcnn.evaluation.config import VisualizeConfig
from rcnn.files import atomic_write_bytes, atomic_write_json, output_dir
from rcnn.modeling.checkpoint import checkpoint_path, load_model
from rcnn.modeling.features import FeatureTaps
from rcnn.ops.boxes import box_iou
from rcnn.progress import progress_bar
from rcnn.runtime.device import autocast

logger = logging.getLogger(__name__)

NMS_IOU = 0.3  # the paper's non-maximum suppression of a unit's regions within an image
CANDIDATES = 64  # a unit's best regions kept while streaming, before NMS


def pool5_shape(model: torch.nn.Module, size: int) -> tuple[int, int, int]:
    """``(C, H, W)`` of the pool5 map: the first linear layer's input, before flattening."""
    x = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    if hasattr(model, "features") and hasattr(model, "avgpool"):  # AlexNet's, VGG's layout
        with torch.no_grad():
            return tuple(model.avgpool(model.features(x)).shape[1:])
    with torch.no_grad(), FeatureTaps(model, ["pool5"]) as taps:
        model(x)
    return (taps.outputs["pool5"].shape[1], 1, 1)


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, tuple | list) else (value, value)


def receptive_field(model, size: int, shape, unit: tuple[int, int, int]) -> list[int]:
    """``[x1, y1, x2, y2]`` of the input pixels a unit's value depends on, in the pixels of a
    warped region: the unit's cell traced back through the adaptive pooling and every
    convolution and pooling of ``model.features`` (kernel, stride, padding, dilation), clipped
    to the input. The whole input for a backbone without that layout (ResNet's pool5 is one
    cell)."""
    layers = getattr(model, "features", None)
    if not isinstance(layers, torch.nn.Sequential) or shape[1:] == (1, 1):
        return [0, 0, size, size]
    sizes = []  # the spatial size of each layer's input
    x = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    with torch.no_grad():
        for layer in layers:
            sizes.append(x.shape[2:])
            x = layer(x)
    spans = []
    for axis, (cell, cells) in enumerate(zip(unit[1:], shape[1:], strict=True)):
        # adaptive pooling: output cell i averages inputs floor(i*I/O) .. ceil((i+1)*I/O) - 1
        inside = x.shape[2 + axis]
        lo, hi = cell * inside // cells, -(-(cell + 1) * inside // cells) - 1
        for layer, before in zip(reversed(layers), reversed(sizes), strict=True):
            if isinstance(layer, torch.nn.Conv2d | torch.nn.MaxPool2d | torch.nn.AvgPool2d):
                kernel, stride = _pair(layer.kernel_size)[axis], _pair(layer.stride)[axis]
                padding = _pair(layer.padding)[axis]
                dilation = _pair(getattr(layer, "dilation", 1))[axis]
                lo, hi = lo * stride - padding, hi * stride - padding + dilation * (kernel - 1)
                lo, hi = max(lo, 0), min(hi, before[axis] - 1)  # padding is no input
        spans.append((lo, hi + 1))
    (y1, y2), (x1, x2) = spans
    return [x1, y1, x2, y2]


def top_regions(model, feeder, units: list[int] | None, keep: int, amp, progress) -> dict:
    """Per unit (a flat pool5 index; every unit with ``None``), the ``keep`` regions of the
    highest activation, best first: ``{"values": [keep, U], "rows": [keep, U]}`` (numpy)."""
    best_values = best_rows = None
    seen = 0
    device = next(model.parameters()).device
    with torch.no_grad(), FeatureTaps(model, ["pool5"]) as taps:
        for images, _ in progress_bar(feeder, progress, desc="pool5", leave=False):
            with autocast(device, amp):
                model(images)
            values = taps.outputs["pool5"].float()
            if units is not None:
                values = values[:, units]
            rows = torch.arange(seen, seen + len(values), device=device)[:, None]
            rows = rows.expand_as(values)
            seen += len(values)
            if best_values is not None:
                values, rows = torch.cat([best_values, values]), torch.cat([best_rows, rows])
            top = values.topk(min(keep, len(values)), dim=0)
            best_values, best_rows = top.values, rows.gather(0, top.indices)
    return {"values": best_values.cpu().numpy(), "rows": best_rows.cpu().numpy()}


def suppressed(rows: np.ndarray, regions, top: int) -> list[int]:
    """The best of ``rows`` (sorted by activation) after non-maximum suppression within each
    image: at most ``top``."""
    chosen: list[int] = []
    for row in rows:
        same = [c for c in chosen if regions.image_index[c] == regions.image_index[row]]
        if same and box_iou(regions.boxes[[row]], regions.boxes[same]).max() > NMS_IOU:
            continue
        chosen.append(int(row))
        if len(chosen) == top:
            break
    return chosen


def run_visualize(cfg: VisualizeConfig) -> dict:
    """Finds each unit's best regions over the split and draws them; returns the summary."""
    check_split_name(cfg.split)
    if cfg.units < 1 or cfg.top < 1:
        raise ConfigError(f"--units and --top must be at least 1, not {cfg.units} and {cfg.top}")
    path = checkpoint_path(cfg.model, default="best.pt")
    loaded = load_model(path, cfg.classes)
    out = output_dir(cfg.out or path.parent / f"units-{cfg.split}")  # before the work
    check_units_out(out, cfg.overwrite)
    regions = load_split(cfg.data, cfg.split, allow_store=True)
    if len(regions) == 0:
        raise ConfigError(f"--data {cfg.data}: split {cfg.split!r} has no regions")
    device, inference, model = loaded.for_inference(cfg.inference)
    spec, warp = loaded.spec, loaded.spec.warp()
    shape = pool5_shape(model, spec.input_size)
    for unit in cfg.unit:
        if not all(0 <= v < n for v, n in zip(unit, shape, strict=True)):
            raise ConfigError(f"--unit {' '.join(map(str, unit))}: pool5 is C x H x W = "
                              f"{' x '.join(map(str, shape))}; each must be within it")  # fmt: skip
    asked = [(c * shape[1] + y) * shape[2] + x for c, y, x in cfg.unit] or None
    store = ImageStore.of(regions, inference.threads)
    batches = chunks(np.arange(len(regions)), inference.batch)
    feeder = make_feeder(regions, batches, warp, device, workers=inference.threads, store=store)
    found = top_regions(model, feeder, asked, CANDIDATES, inference.amp, cfg.progress)
    if asked is None:
        asked = choose_units(found["values"][0], shape, cfg.units)
        if len(asked) < cfg.units:
            logger.warning("--units %d: pool5 has %d channels, one unit a channel: drawing %d",
                           cfg.units, shape[0], len(asked))  # fmt: skip
        columns = asked
    else:
        columns = list(range(len(asked)))
    units = []
    for flat, column in zip(asked, columns, strict=True):
        order = np.argsort(-found["values"][:, column], kind="stable")
        rows = found["rows"][order, column]
        chosen = suppressed(rows, regions, cfg.top)
        value_of = dict(zip(found["rows"][:, column].tolist(), found["values"][:, column].tolist(),
                            strict=True))  # fmt: skip
        unit = (flat // (shape[1] * shape[2]), (flat // shape[2]) % shape[1], flat % shape[2])
        units.append({
            "unit": list(unit),
            "receptive_field": receptive_field(model, spec.input_size, shape, unit),
            "regions": [{"row": r, "image": regions.image_paths[regions.image_index[r]],
                         "box": regions.boxes[r].tolist(), "activation": value_of[r]}
                        for r in chosen],
        })  # fmt: skip
    summary = {"model": str(cfg.model), "split": cfg.split, "pool5": list(shape), "units": units}
    atomic_write_json(out / "units.json", summary)
    picture = draw_units(units, regions, store, warp)
    atomic_write_bytes(out / "units.png", cv2.imencode(".png", picture)[1].tobytes())
    summary["out"] = str(out)
    return summary


OUTPUTS = ("units.json", "units.png")


def check_units_out(out: Path, overwrite: bool) -> None:
    """Refuses, before any work, an ``out`` whose ``units.json`` or ``units.png`` this command
    did not write (another program's, or a picture of the user's): an earlier drawing, whose
    ``units.json`` is a summary of this command's, is replaced; anything else only with
    ``--overwrite``."""
    if overwrite or not any((out / name).exists() for name in OUTPUTS):
        return
    try:
        summary = json.loads((out / "units.json").read_text())
    except (OSError, ValueError):
        summary = None
    if isinstance(summary, dict) and {"model", "split", "pool5", "units"} <= set(summary):
        return
    found = next(name for name in OUTPUTS if (out / name).exists())
    raise ConfigError(
        f"--out {out}: {out / found} was not written by rcnn visualize; choose another --out "
        "or pass --overwrite to replace it"
    )


def choose_units(maxima: np.ndarray, shape, count: int) -> list[int]:
    """The ``count`` units of the highest activation, at most one a channel."""
    chosen, channels = [], set()
    for flat in np.argsort(-maxima, kind="stable").tolist():
        channel = flat // (shape[1] * shape[2])
        if channel in channels:
            continue
        chosen.append(flat)
        channels.add(channel)
        if len(chosen) == count:
            break
    return chosen


def draw_units(units: list[dict], regions, store, warp, tile: int = 112) -> np.ndarray:
    """A row a unit: its regions as the network saw them (BGR), the receptive field in white
    and the activation written on each."""
    columns = max((len(u["regions"]) for u in units), default=1)
    sheet = np.full((len(units) * (tile + 20), columns * tile, 3), 255, np.uint8)
    scale = tile / warp.size
    for i, unit in enumerate(units):
        top = i * (tile + 20)
        label = f"pool5 unit ({unit['unit'][0]}, {unit['unit'][1]}, {unit['unit'][2]})"
        cv2.putText(sheet, label, (4, top + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        x1, y1, x2, y2 = (int(round(v * scale)) for v in unit["receptive_field"])
        for j, region in enumerate(unit["regions"]):
            image = store.image(regions.image_index[region["row"]])  # RGB
            warped = warp_region(image, region["box"], warp.size, warp.pad, mean_fill(warp.mean))
            picture = cv2.resize(warped, (tile, tile))[:, :, ::-1].copy()  # to BGR
            cv2.rectangle(picture, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), 1)
            for colour, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined text
                cv2.putText(picture, f"{region['activation']:.1f}", (3, tile - 5),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, width)  # fmt: skip
            sheet[top + 20 : top + 20 + tile, j * tile : (j + 1) * tile] = picture
    return sheet


def format_units(summary: dict) -> str:
    lines = []
    for unit in summary["units"]:
        values = ", ".join(f"{r['activation']:.2f}" for r in unit["regions"])
        lines.append(f"pool5 unit {tuple(unit['unit'])}: {values}")
    return "\n".join(lines)
