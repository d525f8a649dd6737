"""`rcnn visualize`: each pool5 unit's best regions, checked against a direct computation."""

import json
import logging

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from rcnn.cli import main
from rcnn.data.feeders import chunks, make_feeder
from rcnn.data.regions import load_split
from rcnn.data.warps import ImageStore
from rcnn.evaluation.units import pool5_shape, receptive_field
from rcnn.modeling.backbones import TinyAlexNet
from rcnn.modeling.checkpoint import load_model
from rcnn.modeling.features import FeatureTaps
from rcnn.runtime.config import InferenceConfig

FLAGS = ["--device", "cpu", "--no-amp", "--no-progress", "--threads", "1", "--batch", "32"]


def pool5_of_every_region(model_dir, data):
    """pool5 of every val region, with the network run by hand in float32."""
    loaded = load_model(str(model_dir / "best.pt"))
    regions = load_split(str(data), "val", allow_store=True)
    device, inference, model = loaded.for_inference(InferenceConfig(device="cpu", amp=False))
    batches = chunks(np.arange(len(regions)), 32)
    feeder = make_feeder(regions, batches, loaded.spec.warp(), device, workers=1,
                         store=ImageStore.of(regions, 1))  # fmt: skip
    values = []
    with torch.no_grad(), FeatureTaps(model, ["pool5"]) as taps:
        for images, _ in feeder:
            model(images)
            values.append(taps.outputs["pool5"].clone())
    return regions, torch.cat(values)


def test_a_units_regions_are_its_highest_activations_after_nms(one_epoch_model, prepared, tmp_path):
    regions, pool5 = pool5_of_every_region(one_epoch_model, prepared)
    out = tmp_path / "units"
    argv = ["visualize", str(one_epoch_model), "--data", str(prepared), "--out", str(out),
            "--units", "3", "--top", "3", *FLAGS]  # fmt: skip
    assert main(argv) == 0
    found = json.loads((out / "units.json").read_text())
    shape = found["pool5"]
    assert shape == [32, 3, 3] and len(found["units"]) == 3
    # the chosen units: the highest maxima over the split, one a channel
    maxima = pool5.max(0).values
    flat = [(c * shape[1] + y) * shape[2] + x for c, y, x in (u["unit"] for u in found["units"])]
    assert len({u["unit"][0] for u in found["units"]}) == 3
    best_channel = maxima.view(shape[0], -1).max(1).values
    assert sorted(maxima[flat].tolist(), reverse=True) == pytest.approx(
        best_channel.sort(descending=True).values[:3].tolist(), rel=1e-5
    )
    boxes = torch.as_tensor(regions.boxes, dtype=torch.float32)
    images = torch.as_tensor(regions.image_index)
    for unit, index in zip(found["units"], flat, strict=True):
        scores = pool5[:, index]
        keep = torchvision.ops.batched_nms(boxes, scores, images, 0.3)[:3]  # sorted by score
        got = [r["activation"] for r in unit["regions"]]
        assert got == pytest.approx(scores[keep].tolist(), rel=1e-5, abs=1e-6)
        assert [r["activation"] for r in unit["regions"]] == sorted(got, reverse=True)
        for region in unit["regions"]:
            assert region["box"] == regions.boxes[region["row"]].tolist()
    picture = (out / "units.png").read_bytes()
    assert picture.startswith(b"\x89PNG")


def test_named_units_are_drawn_and_bad_ones_refused(
    one_epoch_model, prepared, tmp_path, capsys, caplog
):
    out = tmp_path / "named"
    argv = ["visualize", str(one_epoch_model), "--data", str(prepared), "--out", str(out), *FLAGS]
    assert main([*argv, "--unit", "5", "1", "2", "--unit", "0", "0", "0", "--top", "2"]) == 0
    found = json.loads((out / "units.json").read_text())
    assert [u["unit"] for u in found["units"]] == [[5, 1, 2], [0, 0, 0]]
    assert "pool5 unit (5, 1, 2)" in capsys.readouterr().out
    before = (out / "units.json").read_bytes()
    assert main([*argv, "--unit", "32", "0", "0"]) == 2
    assert "--unit 32 0 0" in capsys.readouterr().err
    assert main([*argv, "--top", "0"]) == 2
    assert (out / "units.json").read_bytes() == before  # a refused run leaves the last one
    caplog.set_level(logging.WARNING)
    assert main([*argv, "--units", "40", "--top", "1"]) == 0  # 32 channels, one unit each
    assert len(json.loads((out / "units.json").read_text())["units"]) == 32
    assert "--units 40: pool5 has 32 channels, one unit a channel: drawing 32" in caplog.text


def test_files_it_did_not_write_are_refused_untouched(one_epoch_model, prepared, tmp_path, capsys):
    # A folder of the user's pictures: its units.png is not replaced without --overwrite.
    out = tmp_path / "pictures"
    out.mkdir()
    (out / "units.png").write_bytes(b"a picture of the user's")
    argv = ["visualize", str(one_epoch_model), "--data", str(prepared), "--out", str(out),
            "--units", "1", "--top", "1", *FLAGS]  # fmt: skip
    assert main(argv) == 2
    assert f"{out / 'units.png'} was not written by rcnn visualize" in capsys.readouterr().err
    assert (out / "units.png").read_bytes() == b"a picture of the user's"
    assert not (out / "units.json").exists()
    (out / "units.json").write_text('{"another": "program"}')
    assert main(argv) == 2 and "units.json was not written" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "units.png").read_bytes().startswith(b"\x89PNG")
    assert main(argv) == 0  # its own drawing is replaced


def linearized(model: nn.Module) -> nn.Module:
    """The same geometry with every nonlinearity gone: its input gradient is nonzero on every
    pixel a unit depends on."""
    for name, child in model.features.named_children():
        if isinstance(child, nn.ReLU):
            model.features[int(name)] = nn.Identity()
        elif isinstance(child, nn.MaxPool2d):
            model.features[int(name)] = nn.AvgPool2d(child.kernel_size, child.stride, child.padding)
    return model


@pytest.mark.parametrize("unit", [(0, 0, 0), (3, 1, 2), (7, 2, 2)])
def test_receptive_field_is_where_the_gradient_of_a_linearized_network_lives(unit):
    torch.manual_seed(0)
    model = linearized(TinyAlexNet(num_classes=2)).eval()
    shape, size = pool5_shape(model, 96), 96
    x = torch.randn(1, 3, size, size, requires_grad=True)
    pool5 = model.avgpool(model.features(x))
    pool5[0, unit[0], unit[1], unit[2]].backward()
    ys, xs = np.nonzero(x.grad[0].abs().sum(0).numpy())
    expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert receptive_field(model, size, shape, unit) == [int(v) for v in expected]


def test_alexnets_receptive_field_by_hand():
    # Input sizes at 227: conv1 227, pool1 56, conv2 27, pool2 27, conv3-5 13, pool5 13.
    # Cell 0: pool5 [0, 2] <- conv5 [0, 3] <- conv4 [0, 4] <- conv3 [0, 5] <- pool2 [0, 12]
    # <- conv2 [0, 14] <- pool1 [0, 30] <- conv1 (k 11, s 4, p 2) [0, 128]: padding is no input
    model = torchvision.models.alexnet(weights=None)
    shape = (256, 6, 6)
    assert receptive_field(model, 227, shape, (0, 0, 0)) == [0, 0, 129, 129]
    # Cell 5: [10, 12] <- [9, 12] <- [8, 12] <- [7, 12] <- [14, 26] <- [12, 26] <- [24, 54]
    # <- [94, 224]: pool1 (floor mode) never reads conv1's last column, so 225 and 226 are unseen
    assert receptive_field(model, 227, shape, (9, 5, 0)) == [0, 94, 129, 225]
