"""``rcnn export``: a trained detector as one ONNX graph or one TorchScript file.

The run's network, its SVMs or softmax, its box regressors, threshold, NMS and caps are loaded
and checked as ``rcnn detect`` loads them (:class:`rcnn.detection.detector.Detector`), then
put in one graph (:mod:`rcnn.detection.export_graph`), in float32. ONNX goes through torch's
TorchScript-based exporter (``dynamo=False``: it needs nothing beyond torch and onnx, and
exports ``NonMaxSuppression`` as one operator); the file is checked by ``onnx.checker``
before it is written. TorchScript traces the network and scripts the rest (NMS is a loop):
the file needs torch alone, not torchvision. Both are written atomically.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from rcnn.detection.detector import Detector
from rcnn.detection.export_graph import DetectorGraph, RegionNetwork, fixed_pools
from rcnn.detection.exported import EXTRA_FILE, FORMAT, INPUTS, OUTPUTS, ExportConfig
from rcnn.errors import RcnnError
from rcnn.files import atomic_write_bytes, file_digest
from rcnn.modeling.checkpoint import load_model
from rcnn.runtime.config import InferenceConfig

logger = logging.getLogger(__name__)


def run_export(cfg: ExportConfig) -> dict:
    """Writes the detector of ``cfg.model`` to ``cfg.out``; returns its metadata and size."""
    loaded = load_model(cfg.model, cfg.classes)
    detector_cfg = cfg.detector
    cpu = InferenceConfig(device="cpu", amp=False)  # exported in float32
    detector = Detector(loaded, type(detector_cfg)(**{**vars(detector_cfg), "inference": cpu}))
    graph, meta = build_graph(detector, loaded)
    meta["opset"] = cfg.opset if cfg.format == "onnx" else None
    image, proposals = example_inputs(loaded.spec.input_size)
    with torch.no_grad():
        if cfg.format == "onnx":
            data = to_onnx(graph, image, proposals, meta, cfg.opset, loaded.spec.backbone)
        else:
            data = to_torchscript(graph, image, proposals, meta, loaded.spec.backbone)
    atomic_write_bytes(cfg.out, data)
    logger.info("wrote %s (%.1f MB)", cfg.out, len(data) / 1e6)
    return {**meta, "out": cfg.out, "bytes": len(data), "format": cfg.format}


def build_graph(detector: Detector, loaded) -> tuple[DetectorGraph, dict]:
    """The detector's first variant as a :class:`DetectorGraph`, and its metadata."""
    cfg, variant = detector.cfg, detector.variants[0]
    svm = bbox = None
    meta_heads: dict = {"svm_layer": None, "svm_digest": None, "bbox_digest": None}
    if variant.scorer == "svm":
        folder = detector.svm_folder(variant)
        model = detector.svms[folder]
        untrained = [c in model.info.get("untrained", []) for c in model.classes]
        svm = (torch.from_numpy(model.weights), torch.from_numpy(model.biases), model.scale,
               untrained)  # fmt: skip
        meta_heads.update(svm_layer=model.layer, svm_digest=file_digest(folder / "svm.npz"))
    if variant.bbox_reg:
        model = detector.bbox
        bbox = (torch.from_numpy(model.weights), torch.from_numpy(model.intercepts), model.scale)
        meta_heads["bbox_digest"] = file_digest(detector.bbox_folder / "bbox.npz")
    warp = loaded.spec.warp()
    model = fixed_pools(copy.deepcopy(detector.model).to(memory_format=torch.contiguous_format),
                        warp.size)  # fmt: skip
    network = RegionNetwork(model, meta_heads["svm_layer"], bbox is not None)
    thresh = cfg.threshold(variant.scorer)
    graph = DetectorGraph(network, warp, svm, bbox, thresh, cfg.nms, cfg.max_per_class,
                          cfg.max_per_image).eval()  # fmt: skip
    meta = {
        "format": FORMAT,
        "classes": list(loaded.classes),
        "inputs": "image uint8 [H, W, 3] RGB; proposals float32 [N, 4] x1 y1 x2 y2 (x2, y2 "
        "exclusive), N >= 1",
        "outputs": "boxes float32 [D, 4]; scores float32 [D]; labels int64 [D] (1..K), best first",
        "backbone": loaded.spec.backbone,
        "input_size": warp.size,
        "context_pad": warp.pad,
        "norm": loaded.spec.norm,
        "mean": list(warp.mean),
        "std": list(warp.std),
        "scorer": variant.scorer,
        "bbox_reg": bool(variant.bbox_reg),
        "score_thresh": float(thresh),
        "nms": cfg.nms,
        "max_per_class": cfg.max_per_class,
        "max_per_image": cfg.max_per_image,
        "mode": cfg.mode,
        "max_side": cfg.max_side,
        "weights_digest": loaded.digest,
        "model": str(Path(loaded.source).resolve()),
        "precision": "float32",
        **meta_heads,
    }
    return graph, meta


def example_inputs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image and proposals to trace with (any: every size in the graph is dynamic)."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (size + 7, size + 13, 3), dtype=np.uint8))
    proposals = torch.tensor([[0, 0, size, size], [4, 6, 30, 40], [10, 3, size + 9, size]],
                             dtype=torch.float32)  # fmt: skip
    return image, proposals


def _cannot_trace(backbone: str, err: Exception) -> RcnnError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return RcnnError(
        f"--backbone {backbone} does not export as one graph ({type(err).__name__}: {first}); "
        "export a run of a traceable backbone (alexnet, vgg16, resnet50, ...)"
    )


def to_onnx(graph, image, proposals, meta: dict, opset: int, backbone: str) -> bytes:
    """The graph as ONNX bytes with ``meta`` in its ``metadata_props``, checked."""
    try:
        import onnx
    except ImportError:
        raise RcnnError("--format onnx needs onnx: pip install 'rcnn[export]'") from None
    buffer = io.BytesIO()
    dynamic = {"image": {0: "height", 1: "width"}, "proposals": {0: "n"},
               "boxes": {0: "d"}, "scores": {0: "d"}, "labels": {0: "d"}}  # fmt: skip
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
            torch.onnx.export(graph, (image, proposals), buffer, dynamo=False,
                              opset_version=opset, input_names=list(INPUTS),
                              output_names=list(OUTPUTS), dynamic_axes=dynamic,
                              autograd_inlining=False)  # fmt: skip
    except Exception as err:  # the exporter raises many kinds, all meaning "not exportable"
        raise _cannot_trace(backbone, err) from err
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    model.doc_string = f"R-CNN detector of {meta['classes']} (rcnn export)"
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def to_torchscript(graph, image, proposals, meta: dict, backbone: str) -> bytes:
    """The graph as a TorchScript file (network traced, the rest scripted), ``meta`` in its
    extra file ``rcnn.json``."""
    regions = graph.warp(image, proposals)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            graph.network = torch.jit.trace(graph.network, regions, check_trace=False)
        scripted = torch.jit.script(graph)
    except Exception as err:  # tracing and scripting raise many kinds
        raise _cannot_trace(backbone, err) from err
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={EXTRA_FILE: json.dumps(meta)})
    return buffer.getvalue()
