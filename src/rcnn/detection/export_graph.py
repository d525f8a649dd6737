"""The detector as one graph of tensors, for ONNX and TorchScript: an RGB image and its
proposals in, the detections out.

Every step is the CPU detector's (:mod:`rcnn.detection.detector` on the ``threads`` warp path):

* normalization by a ``[256, 3]`` table computed in float64 (:func:`normalization_table`);
* the warp: each proposal grown for context and rounded to whole pixels (as
  :func:`rcnn.data.warps.context_boxes`), then resized to ``S x S`` by OpenCV's bilinear rule,
  sample ``i`` at ``x1 + (i + 0.5) * w / S - 0.5`` clamped to the crop's first and last pixel,
  context outside the image zero (the mean colour). ``grid_sample`` (ONNX ``GridSample``)
  samples every region of the image in one call. ``roi_align`` (the GPU path) reads the
  neighbouring image pixels instead of clamping to the crop, which changes the border rows of
  upscaled regions: the graph follows OpenCV, so that it gives ``rcnn detect``'s scores;
* the network, its features rounded to float16 as the detector keeps them, the SVMs (or the
  softmax), the box regressors (decoded in float64 and clipped to the image);
* the score threshold, per-class NMS (ONNX ``NonMaxSuppression``, classes as its batch), the
  per-class and per-image caps, best first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcnn.data.feeders import Warp, normalization_table
from rcnn.modeling.features import FeatureTaps

NO_CAP = 2**31 - 1  # ONNX NonMaxSuppression keeps nothing for 0


class FixedAvgPool(nn.Module):
    """``AdaptiveAvgPool2d`` of a known input size, as the average of each of its windows
    (torch's windows: ``floor(i * n / m)`` to ``ceil((i + 1) * n / m)``): ONNX's exporter
    takes an adaptive pool only where the output size divides the input size."""

    def __init__(self, size_in: tuple[int, int], size_out: tuple[int, int]):
        super().__init__()
        self.rows = windows(size_in[0], size_out[0])
        self.cols = windows(size_in[1], size_out[1])

    def forward(self, x: Tensor) -> Tensor:
        rows = [torch.cat([x[:, :, r0:r1, c0:c1].mean((2, 3), keepdim=True)
                           for c0, c1 in self.cols], 3) for r0, r1 in self.rows]  # fmt: skip
        return torch.cat(rows, 2)


def windows(n: int, m: int) -> list[tuple[int, int]]:
    return [((i * n) // m, -((-(i + 1) * n) // m)) for i in range(m)]


def fixed_pools(model: nn.Module, size: int) -> nn.Module:
    """``model`` with each adaptive average pool of a non-dividing size replaced by a
    :class:`FixedAvgPool` for ``size`` x ``size`` inputs (the same numbers)."""
    pools = {name: m for name, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)}
    shapes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(
        name, (i[0].shape[-2], i[0].shape[-1]))) for name, m in pools.items()]  # fmt: skip
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    for name, pool in pools.items():
        out = pool.output_size
        out = (out, out) if isinstance(out, int) else tuple(out)
        size_in = shapes.get(name)
        if (
            size_in is None
            or None in out
            or all(a % b == 0 for a, b in zip(size_in, out, strict=True))
        ):
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, FixedAvgPool(size_in, out))
    return model


class RegionNetwork(nn.Module):
    """The fine-tuned network returning ``(logits [B, K + 1], scored features [B, D],
    pool5 [B, P])``: the features the SVMs score (the logits where softmax scores) and those
    the box regressors read (the logits where there are none), from forward hooks."""

    def __init__(self, model: nn.Module, svm_layer: str | None, bbox: bool):
        super().__init__()
        self.model = model.eval()
        self.svm_layer, self.bbox = svm_layer, bbox
        layers = {svm_layer, "pool5" if bbox else None} - {None}
        self.taps = FeatureTaps(model, sorted(layers))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.model(x)
        out = self.taps.outputs
        scored = out[self.svm_layer] if self.svm_layer else logits
        return logits, scored, out["pool5"] if self.bbox else logits


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes ``a [N, 4]`` and ``b [M, 4]``: ``[N, M]`` (torchvision's arithmetic)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def per_class_nms(boxes: Tensor, scores: Tensor, iou: float, cap: int) -> Tensor:
    """Greedy NMS of each class alone, as ONNX ``NonMaxSuppression`` with the classes as its
    batch: ``boxes [K, N, 4]``, ``scores [K, N]`` (-inf: not a candidate); returns
    ``[M, 3]`` int64 rows ``(class, 0, box)``, each class's best first, at most ``cap``."""
    rows = [torch.zeros((0, 3), dtype=torch.int64)]
    for k in range(boxes.shape[0]):
        valid = torch.nonzero(scores[k] > float("-inf")).flatten()
        order = valid[torch.argsort(scores[k][valid], descending=True, stable=True)]
        over = box_iou(boxes[k][order], boxes[k][order]) > iou  # [C, C]
        removed = torch.zeros(len(order), dtype=torch.bool)
        kept: list[int] = []
        for i in range(len(order)):
            if bool(removed[i]):
                continue
            kept.append(i)
            if len(kept) == cap:
                break
            removed = removed | over[i]
        index = order[torch.tensor(kept, dtype=torch.int64)]
        label = torch.full_like(index, k)
        rows.append(torch.stack([label, torch.zeros_like(index), index], 1))
    return torch.cat(rows)


class OnnxNMS(torch.autograd.Function):
    """:func:`per_class_nms` when traced, ONNX ``NonMaxSuppression`` when exported."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou: float, cap: int) -> Tensor:
        return per_class_nms(boxes, scores[:, 0], iou, cap)

    @staticmethod
    def symbolic(g, boxes, scores, iou: float, cap: int):
        cap_t = g.op("Constant", value_t=torch.tensor([cap], dtype=torch.int64))
        iou_t = g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32))
        # -inf marks a dropped box; ONNX keeps scores strictly above the threshold.
        lowest = torch.tensor([torch.finfo(torch.float32).min], dtype=torch.float32)
        return g.op("NonMaxSuppression", boxes, scores, cap_t, iou_t,
                    g.op("Constant", value_t=lowest))  # fmt: skip


class DetectorGraph(nn.Module):
    """``forward(image uint8 [H, W, 3] RGB, proposals float32 [N, 4])`` -> ``(boxes float32
    [D, 4], scores float32 [D], labels int64 [D])``, best first; ``N >= 1``.

    Args:
        network: a :class:`RegionNetwork` (eager, or traced for TorchScript).
        warp: the run's input size, context padding and normalization.
        svm: ``(weights [K, D], biases [K], scale, untrained [K] bool)``, or None (softmax).
        bbox: ``(weights [K, P, 4], intercepts [K, 4], scale)``, or None.
        thresh, nms, max_per_class, max_per_image: the detector's (0: no cap).
    """

    def __init__(self, network, warp: Warp, svm, bbox, thresh: float, nms: float,
                 max_per_class: int, max_per_image: int):  # fmt: skip
        super().__init__()
        self.network = network
        self.size, self.pad = warp.size, warp.pad
        table = torch.from_numpy(normalization_table(warp.mean, warp.std).reshape(-1))
        self.register_buffer("table", table)  # [256 * 3]: value * 3 + channel
        self.register_buffer("channel", torch.arange(3, dtype=torch.int64))
        self.use_svm, self.use_bbox = svm is not None, bbox is not None
        weights, biases, scale, untrained = svm or (torch.zeros(1, 1), torch.zeros(1), 1.0, [])
        self.register_buffer("svm_weights", torch.as_tensor(weights).float().t().contiguous())
        self.register_buffer("svm_biases", torch.as_tensor(biases).float())
        self.register_buffer("svm_untrained", torch.as_tensor(untrained, dtype=torch.bool))
        self.svm_scale = float(scale)
        weights, offsets, scale = bbox or (torch.zeros(1, 1, 4), torch.zeros(1, 4), 1.0)
        weights = torch.as_tensor(weights).float()  # [K, P, 4] -> [P, K * 4]
        self.register_buffer("bbox_weights", weights.permute(1, 0, 2).reshape(len(weights[0]), -1))
        self.register_buffer("bbox_offsets", torch.as_tensor(offsets).float().reshape(-1))
        self.bbox_scale = float(scale)
        self.thresh, self.nms = float(thresh), float(nms)
        self.max_per_class = int(max_per_class) or NO_CAP
        self.max_per_image = int(max_per_image)

    def forward(self, image: Tensor, proposals: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        height, width = image.shape[0], image.shape[1]
        logits, scored, pool5 = self.network(self.warp(image, proposals))
        if self.use_svm:
            x = scored.half().float() * self.svm_scale  # the detector keeps float16 features
            scores = x @ self.svm_weights + self.svm_biases
            scores = torch.where(self.svm_untrained, float("-inf"), scores)
        else:
            scores = torch.softmax(logits.float(), 1)[:, 1:]
        boxes = self.regress(proposals, pool5, width, height, scores.shape[1])  # [K, N, 4]
        return self.select(boxes, scores)

    def warp(self, image: Tensor, proposals: Tensor) -> Tensor:
        """The normalized ``[N, 3, S, S]`` regions, as OpenCV warps them."""
        height, width = image.shape[0], image.shape[1]
        planes = self.table[image.long() * 3 + self.channel].permute(2, 0, 1).unsqueeze(0)
        boxes = proposals.double()
        size = self.size
        if self.pad:
            grow = size / (size - 2 * self.pad)
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2
            half = (boxes[:, 2:] - boxes[:, :2]) / 2 * grow
            boxes = torch.cat([centre - half, centre + half], 1)
        boxes = torch.round(boxes)
        steps = (torch.arange(size, dtype=torch.float64) + 0.5) / size  # [S]
        extent = boxes[:, 2:] - boxes[:, :2]  # [N, 2] the crop's width and height
        at = extent[:, :, None] * steps - 0.5  # [N, 2, S] within the crop
        at = torch.minimum(at.clamp(min=0), (extent - 1)[:, :, None]) + boxes[:, :2, None]
        # grid_sample's coordinates (align_corners=False): -1 and 1 are the outer pixel edges.
        gx = (2 * at[:, 0] + 1) / width - 1  # [N, S]
        gy = (2 * at[:, 1] + 1) / height - 1
        n = proposals.shape[0]
        grid = torch.stack([gx[:, None, :].expand(n, size, size),
                            gy[:, :, None].expand(n, size, size)], -1)  # fmt: skip
        grid = grid.float().reshape(1, n * size, size, 2)
        out = F.grid_sample(planes, grid, "bilinear", "zeros", align_corners=False)
        return out.reshape(3, n, size, size).transpose(0, 1).contiguous()

    def regress(self, proposals: Tensor, pool5: Tensor, width: int, height: int, k: int):
        """Each class's boxes ``[K, N, 4]``: the proposals, or moved by its regressor."""
        n = proposals.shape[0]
        if not self.use_bbox:
            return proposals.float().unsqueeze(0).expand(k, n, 4)
        x = pool5.half().float() * self.bbox_scale
        deltas = (x @ self.bbox_weights + self.bbox_offsets).reshape(n, k, 4).double()
        p = proposals.double()
        pw, ph = (p[:, 2] - p[:, 0])[:, None], (p[:, 3] - p[:, 1])[:, None]  # [N, 1]
        px, py = p[:, 0][:, None] + 0.5 * pw, p[:, 1][:, None] + 0.5 * ph
        x_, y_ = px + deltas[..., 0] * pw, py + deltas[..., 1] * ph  # [N, K]
        w, h = pw * torch.exp(deltas[..., 2]), ph * torch.exp(deltas[..., 3])
        zero = torch.zeros_like(x_)
        x1 = torch.minimum(torch.maximum(x_ - 0.5 * w, zero), zero + width)
        y1 = torch.minimum(torch.maximum(y_ - 0.5 * h, zero), zero + height)
        x2 = torch.minimum(torch.maximum(x_ + 0.5 * w, zero), zero + width)
        y2 = torch.minimum(torch.maximum(y_ + 0.5 * h, zero), zero + height)
        return torch.stack([x1, y1, x2, y2], -1).float().transpose(0, 1)

    def select(self, boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Threshold, per-class NMS and the caps: boxes ``[K, N, 4]``, scores ``[N, K]``."""
        n = scores.shape[0]
        candidates = torch.where(scores >= self.thresh, scores, float("-inf")).t()  # [K, N]
        if torch.jit.is_scripting():
            chosen = per_class_nms(boxes, candidates, self.nms, self.max_per_class)
        else:
            chosen = self._onnx_nms(boxes, candidates)
        flat = chosen[:, 0] * n + chosen[:, 2]  # [M] into the [K * N] candidates
        found = candidates.reshape(-1)[flat]
        order = torch.argsort(found, descending=True)
        if self.max_per_image:
            order = order[: self.max_per_image]
        flat = flat[order]
        return boxes.reshape(-1, 4)[flat], found[order], chosen[order, 0] + 1

    @torch.jit.unused
    def _onnx_nms(self, boxes: Tensor, candidates: Tensor) -> Tensor:
        return OnnxNMS.apply(boxes, candidates.unsqueeze(1), self.nms, self.max_per_class)
