"""`rcnn export`: the detector as one ONNX graph (onnxruntime) and one TorchScript file, each
giving the torch detector's detections."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from rcnn.cli import main
from rcnn.modeling.checkpoint import save_checkpoint
from tests.helpers import copy_run

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

CPU = ["--device", "cpu", "--no-amp", "--no-progress"]
# Every box counts, as `rcnn test` scores them.
EVAL = ["--keep-all", "--max-per-class", "100", "--max-per-image", "0"]


@pytest.fixture(scope="module")
def heads(trained, tmp_path_factory):
    """A copy of the session's trained run with SVMs (fc7) and box regressors."""
    root = tmp_path_factory.mktemp("export")
    run = copy_run(trained / "run", root / "run")
    cache = ["--cache-dir", str(trained / "cache")]
    assert main(["prepare", "--voc-root", str(trained / "voc"), "--out", str(root / "paper"),
                 "--preset", "paper", "--mode", "fast", "--workers", "1", "--no-progress",
                 *cache]) == 0  # fmt: skip
    for stage in ("train-svm", "train-bbox"):
        assert main([stage, str(run), "--data", str(root / "paper"), *CPU]) == 0
    return root


def export(heads, name: str, *flags: str) -> str:
    out = heads / name
    if not out.exists():
        heads_flags = ["--scorer", "svm", "--bbox-reg", str(heads / "run" / "bbox")]
        assert main(["export", str(heads / "run"), "--out", str(out), *heads_flags, *flags]) == 0
    return str(out)


def test_images(trained) -> list[str]:
    ids = (trained / "voc" / "ImageSets" / "Main" / "test.txt").read_text().split()
    return [str(trained / "voc" / "JPEGImages" / f"{i}.jpg") for i in ids]


test_images.__test__ = False  # a helper, not a test


def assert_same(expected, found) -> None:
    """The same count, labels, boxes within 0.5 pixel and scores within 1e-3."""
    assert len(expected) == len(found)
    for a, b in zip(expected, found, strict=True):
        assert len(a.scores) == len(b.scores)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=0, atol=0.5)
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-3)


def test_onnx_passes_the_checker_and_records_the_detector(heads):
    from rcnn.modeling.checkpoint import load_model

    path = export(heads, "eval.onnx", *EVAL)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    loaded = load_model(heads / "run")
    assert meta["weights_digest"] == loaded.digest
    assert meta["classes"] == loaded.classes
    assert (meta["input_size"], meta["context_pad"]) == (loaded.spec.input_size,
                                                         loaded.spec.context_pad)  # fmt: skip
    assert meta["mean"] == list(loaded.spec.warp().mean)
    assert meta["scorer"] == "svm" and meta["bbox_reg"] and meta["svm_layer"] == "fc7"
    assert meta["score_thresh"] == float("-inf") and meta["max_per_class"] == 100
    assert [i.name for i in model.graph.input] == ["image", "proposals"]
    assert {op.op_type for op in model.graph.node} >= {"NonMaxSuppression", "GridSample"}


def test_rcnn_detect_of_the_onnx_file_gives_the_torch_detections(heads, trained, tmp_path):
    flags = ["--scorer", "svm", "--bbox-reg", str(heads / "run" / "bbox"), "--score-thresh",
             "-1", "--cache-dir", str(trained / "cache"), "--workers", "1", *CPU]  # fmt: skip
    images = test_images(trained)
    path = export(heads, "detect.onnx", "--score-thresh", "-1")
    results = {}
    for name, model, extra in (("torch", str(heads / "run"), flags), ("onnx", path, flags)):
        assert main(["detect", model, *images, "--out", str(tmp_path / name), *extra]) == 0
        lines = (tmp_path / name / "detections.jsonl").read_text().splitlines()
        results[name] = [json.loads(line) for line in lines]
    total = 0
    for a, b in zip(results["torch"], results["onnx"], strict=True):
        assert a["image"] == b["image"] and len(a["detections"]) == len(b["detections"])
        for x, y in zip(a["detections"], b["detections"], strict=True):
            assert x["class"] == y["class"] and abs(x["score"] - y["score"]) < 1e-3
            np.testing.assert_allclose(x["box"], y["box"], rtol=0, atol=0.5)
        total += len(a["detections"])
    assert total > len(images)  # the comparison is not of empty lists


def test_an_onnx_detector_reads_a_proposal_file_under_the_same_cap(
    heads, trained, tmp_path, caplog
):
    # --max-proposals cuts each image's boxes of a --proposals file for the exported detector
    # as for the torch one: the same first boxes, the same detections, the images named.
    mat = tmp_path / "test.mat"
    assert main(["proposals", "--voc-root", str(trained / "voc"), "--split", "test", "--out",
                 str(mat), "--mode", "fast", "--cache-dir", str(trained / "cache"),
                 "--no-progress"]) == 0  # fmt: skip
    flags = ["--scorer", "svm", "--bbox-reg", str(heads / "run" / "bbox"), "--score-thresh=-1e9",
             "--proposals", str(mat), "--max-proposals", "4", *CPU]  # fmt: skip
    path = export(heads, "capped.onnx", "--score-thresh=-1e9")
    images = test_images(trained)[:2]
    found = {}
    for name, model in (("torch", str(heads / "run")), ("onnx", path)):
        caplog.clear()
        assert main(["detect", model, *images, "--out", str(tmp_path / name), *flags]) == 0
        assert "more than --max-proposals 4 boxes" in caplog.text, name
        lines = (tmp_path / name / "detections.jsonl").read_text().splitlines()
        found[name] = [json.loads(line)["detections"] for line in lines]
    for a, b in zip(found["torch"], found["onnx"], strict=True):
        assert 0 < len(a) <= 4 and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert x["class"] == y["class"] and abs(x["score"] - y["score"]) < 1e-3


def test_onnx_detections_score_the_torch_detectors_ap(heads, trained, tmp_path, capsys):
    from rcnn.api import Detector
    from rcnn.evaluation.result_files import write_results

    voc = ["--voc-root", str(trained / "voc"), "--cache-dir", str(trained / "cache")]
    heads_flags = ["--scorer", "svm", "--bbox-reg", str(heads / "run" / "bbox")]
    assert main(["test", str(heads / "run"), "--out", str(tmp_path / "torch"), *voc,
                 *heads_flags, *CPU]) == 0  # fmt: skip
    torch_map = json.loads((tmp_path / "torch" / "metrics.json").read_text())["map"]
    images = test_images(trained)
    detector = Detector.load(export(heads, "eval.onnx", *EVAL), workers=1,
                             cache_dir=trained / "cache")  # fmt: skip
    found = list(detector.detect_many(images))
    ids = [p.rsplit("/", 1)[1].removesuffix(".jpg") for p in images]
    per_class = {}
    for k in range(1, len(detector.classes) + 1):
        rows = [(i, r.scores[r.labels == k], r.boxes[r.labels == k]) for i, r in enumerate(found)]
        per_class[k] = (np.concatenate([np.full(len(s), i) for i, s, _ in rows]),
                        np.concatenate([s for _, s, _ in rows]),
                        np.concatenate([b for _, _, b in rows]))  # fmt: skip
    (tmp_path / "onnx").mkdir()
    write_results(tmp_path / "onnx", "test", detector.classes, per_class, ids)
    assert main(["test", "--dets", str(tmp_path / "onnx"), *voc[:2]]) == 0
    onnx_map = json.loads((tmp_path / "onnx" / "metrics.json").read_text())["map"]
    assert torch_map > 0.1 and abs(onnx_map - torch_map) <= 0.002


TORCH_ONLY = """
import sys
sys.modules["torchvision"] = sys.modules["rcnn"] = sys.modules["onnxruntime"] = None
import numpy as np, torch
files = {"rcnn.json": ""}
model = torch.jit.load(sys.argv[1], _extra_files=files)
inputs = np.load(sys.argv[2])
out = {}
with torch.no_grad():
    for i in range(len(inputs.files) // 2):
        found = model(torch.from_numpy(inputs[f"image{i}"]), torch.from_numpy(inputs[f"boxes{i}"]))
        for name, value in zip(("boxes", "scores", "labels"), found):
            out[f"{name}{i}"] = value.numpy()
np.savez(sys.argv[3], **out)
print(files["rcnn.json"].decode())
"""


def test_torchscript_runs_with_torch_alone_and_gives_the_onnx_detections(heads, trained, tmp_path):
    from rcnn.data.config import ProposalConfig
    from rcnn.data.proposals import compute_proposals
    from rcnn.detection.exported import ExportedModel, read_rgb

    script = export(heads, "eval.pt", *EVAL, "--format", "torchscript")
    onnx_model = ExportedModel(export(heads, "eval.onnx", *EVAL))
    images = test_images(trained)[:3]
    found = compute_proposals(images, ProposalConfig("fast"), trained / "cache", 1, False)
    inputs = {}
    for i, r in enumerate(found):
        inputs[f"image{i}"] = read_rgb(r.path, tuple(r.size))
        inputs[f"boxes{i}"] = r.boxes.astype(np.float32)
    np.savez(tmp_path / "in.npz", **inputs)
    done = subprocess.run([sys.executable, "-c", TORCH_ONLY, script, str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["weights_digest"] == onnx_model.meta["weights_digest"]
    out = np.load(tmp_path / "out.npz")
    from rcnn.detection.detections import Detections

    scripted = [Detections(out[f"boxes{i}"], out[f"scores{i}"], out[f"labels{i}"])
                for i in range(len(images))]  # fmt: skip
    expected = [onnx_model(inputs[f"image{i}"], inputs[f"boxes{i}"]) for i in range(len(images))]
    assert sum(len(d) for d in expected) > 10
    assert_same(expected, scripted)


NO_TORCH = """
import sys
from rcnn import Detector
det = Detector.load(sys.argv[1], workers=1, cache_dir=sys.argv[3])
result = det(sys.argv[2])
assert "torch" not in sys.modules, "torch was imported"
print(len(result), result.names[:1])
"""


def test_detector_load_runs_an_onnx_file_without_torch(heads, trained):
    path = export(heads, "eval.onnx", *EVAL)
    image = test_images(trained)[0]
    done = subprocess.run([sys.executable, "-c", NO_TORCH, path, image, str(trained / "cache")],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    count, names = done.stdout.split(" ", 1)
    assert int(count) > 0 and "car" in names


def test_mistakes_are_one_line_errors(heads, trained, tmp_path, capsys):
    plain = copy_run(trained / "run", tmp_path / "plain")  # no SVMs
    strange = copy_run(trained / "run", tmp_path / "strange")
    ckpt = torch.load(strange / "best.pt", weights_only=True)
    ckpt["config"]["backbone"] = "nonesuch"
    (strange / "best.pt").unlink()
    save_checkpoint(strange / "best.pt", ckpt)  # as a run writes it (its digest recorded)
    (tmp_path / "taken.onnx").write_bytes(b"")
    cases = [
        (["export", str(plain), "--scorer", "svm", "--out", str(tmp_path / "a.onnx")], "svm"),
        (["export", str(strange), "--out", str(tmp_path / "b.onnx")], "nonesuch"),
        (["export", str(plain), "--out", str(tmp_path / "taken.onnx")], "already exists"),
        (
            [
                "export",
                str(plain),
                "--format",
                "torchscript",
                "--opset",
                "9",
                "--out",
                str(tmp_path / "c.pt"),
            ],
            "--opset",
        ),  # fmt: skip
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
        assert not (tmp_path / "a.onnx").exists()
    path = export(heads, "eval.onnx", *EVAL)
    argv = ["detect", path, test_images(trained)[0], "--out", str(tmp_path / "d"), "--nms", "0.5"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--nms 0.3" in err, err


def test_fixed_pool_is_the_adaptive_pool():
    from rcnn.detection.export_graph import FixedAvgPool

    x = torch.randn(2, 3, 7, 11)
    for size in ((3, 3), (2, 5), (7, 11), (1, 1)):
        np.testing.assert_allclose(
            FixedAvgPool((7, 11), size)(x).numpy(),
            nn.AdaptiveAvgPool2d(size)(x).numpy(), rtol=1e-6, atol=1e-6,
        )  # fmt: skip


def test_per_class_nms_is_torchvisions_batched_nms():
    from torchvision.ops import batched_nms

    from rcnn.detection.export_graph import per_class_nms

    gen = torch.Generator().manual_seed(0)
    corner = torch.rand(2, 40, 2, generator=gen) * 50
    boxes = torch.cat([corner, corner + 5 + torch.rand(2, 40, 2, generator=gen) * 30], 2)
    scores = torch.rand(2, 40, generator=gen)
    scores[1, ::3] = float("-inf")  # not candidates
    rows = per_class_nms(boxes, scores, 0.3, 1000)
    valid = scores > float("-inf")
    k, n = torch.nonzero(valid, as_tuple=True)
    keep = batched_nms(boxes[k, n], scores[k, n], k, 0.3)
    expected = sorted(zip(k[keep].tolist(), n[keep].tolist(), strict=True))
    assert sorted(zip(rows[:, 0].tolist(), rows[:, 2].tolist(), strict=True)) == expected
    capped = per_class_nms(boxes, scores, 0.3, 2)
    assert torch.bincount(capped[:, 0]).tolist() == [2, 2]


def test_an_exported_detector_has_no_stages_to_explain(heads, trained):
    from rcnn import Detector, RcnnError

    det = Detector.load(export(heads, "eval.onnx", *EVAL))
    with pytest.raises(RcnnError, match="exported graph"):
        det.explain(test_images(trained)[0])
