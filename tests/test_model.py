import pytest
import torch
from torch import nn
from torchvision import models

from rcnn.modeling.model import (
    WeightsError,
    build_model,
    head_name,
    normalization,
    parameter_groups,
)


@pytest.mark.parametrize(
    ("backbone", "head", "in_features"),
    [
        ("alexnet", "classifier.6", 4096),
        ("alexnet_tiny", "classifier.6", 128),
        ("resnet18", "fc", 512),
        ("mobilenet_v3_small", "classifier.3", 1024),
    ],
)
def test_head_replaced(backbone, head, in_features):
    model = build_model(backbone, num_classes=3, weights="none")
    assert model.rcnn_head == head == head_name(model)
    layer = model.get_submodule(head)
    assert isinstance(layer, nn.Linear) and (layer.in_features, layer.out_features) == (
        in_features,
        3,
    )
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 112, 112)).shape == (2, 3)


def test_state_dict_loads_strictly_into_torchvision_alexnet():
    model = build_model("alexnet", 2, "none")
    reference = models.alexnet()
    reference.classifier[6] = nn.Linear(4096, 2)
    reference.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 3, 227, 227)
    model.eval(), reference.eval()
    torch.testing.assert_close(reference(x), model(x))


def test_local_imagenet_state_dict(tmp_path):
    imagenet = models.alexnet()  # stands in for alexnet-owt-7be5be79.pth: same keys and shapes
    torch.save(imagenet.state_dict(), tmp_path / "alexnet.pth")
    model = build_model("alexnet", 2, str(tmp_path / "alexnet.pth"))
    torch.testing.assert_close(model.features[0].weight, imagenet.features[0].weight)
    assert model.classifier[6].out_features == 2


def test_local_finetuned_state_dict_keeps_its_head(tmp_path):
    trained = build_model("alexnet", 3, "none")
    torch.save(trained.state_dict(), tmp_path / "model.pth")
    model = build_model("alexnet", 3, str(tmp_path / "model.pth"))
    torch.testing.assert_close(model.classifier[6].weight, trained.classifier[6].weight)


def test_bad_weights_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="--weights .*nope.pth: file not found"):
        build_model("alexnet", 2, str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth: not a readable state dict"):
        build_model("alexnet", 2, str(tmp_path / "junk.pth"))
    torch.save(models.resnet18().state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(
        WeightsError, match="resnet.pth does not fit torchvision's AlexNet: 16 missing"
    ):
        build_model("alexnet", 2, str(tmp_path / "resnet.pth"))


def test_offline_imagenet_weights_say_what_to_do(tmp_path, monkeypatch):
    # No cached file and no way out: point torch's cache at an empty folder and every
    # connection at a closed local port.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(WeightsError, match="Offline\\? .*--weights PATH.*--weights none"):
        build_model("alexnet", 2, "imagenet")


def test_unknown_backbone_and_bad_class_count():
    with pytest.raises(
        ValueError, match="--backbone 'alexnett' is not a torchvision ImageNet classifier"
    ):
        build_model("alexnett", 2, "none")
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build_model("alexnet", 1, "none")


def test_parameter_groups_head_multiplier():
    model = build_model("alexnet", 2, "none")
    groups = parameter_groups(model, lr=1e-3, weight_decay=5e-4, head_lr_mult=10)
    assert groups[0]["lr"] == 1e-3 and groups[1]["lr"] == pytest.approx(1e-2)
    assert [p.shape for p in groups[1]["params"]] == [(2, 4096), (2,)]
    n = sum(len(g["params"]) for g in groups)
    assert n == len(list(model.parameters()))


def test_normalization_from_weights_metadata():
    assert normalization("alexnet") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_feature_taps_of_alexnet_and_of_its_tiny_twin():
    from rcnn.modeling.features import feature_dims

    alexnet_dims = feature_dims(build_model("alexnet", 2, "none"))
    assert alexnet_dims == {"pool5": 9216, "fc6": 4096, "fc7": 4096}
    tiny = build_model("alexnet_tiny", 2, "none")
    assert feature_dims(tiny) == {"pool5": 288, "fc6": 128, "fc7": 128}
    # The same layout as AlexNet: fc7 is what the first six classifier layers give.
    alexnet = build_model("alexnet", 2, "none")
    assert [type(m) for m in tiny.classifier] == [type(m) for m in alexnet.classifier]
    assert sum(p.numel() for p in build_model("alexnet_tiny", 1000, "none").parameters()) < 2e5


def test_the_tiny_backbone_has_no_pretrained_weights(tmp_path):
    with pytest.raises(ValueError, match="--backbone alexnet_tiny has no pretrained weights"):
        build_model("alexnet_tiny", 2, "imagenet")
    assert normalization("alexnet_tiny") == normalization("alexnet")
    trained = build_model("alexnet_tiny", 3, "none")
    torch.save(trained.state_dict(), tmp_path / "tiny.pth")
    loaded = build_model("alexnet_tiny", 3, str(tmp_path / "tiny.pth"))
    torch.testing.assert_close(loaded.classifier[6].weight, trained.classifier[6].weight)


def test_every_field_of_a_checkpoint_is_checked_when_loading(one_epoch_model, tmp_path, capsys):
    from rcnn.cli import main
    from rcnn.modeling.checkpoint import CheckpointError, load_checkpoint, load_model

    good = torch.load(one_epoch_model / "best.pt", weights_only=True)
    data = str(one_epoch_model.parent / "regions")
    cases = [
        ({"classes": None}, "its classes is not a list of distinct class names"),
        ({"classes": 3}, "its classes is not a list of distinct class names"),
        ({"classes": ["background", "car", "Car"]}, "its classes is not a list of distinct"),
        ({"classes": ["background", ""]}, "its classes is not a list of distinct"),
        ({"classes": ["background", "../car"]}, "not a usable class name"),
        ({"epoch": "one"}, "its epoch is not a count of epochs"),
        ({"model": {"w": 1}}, "its model is not a state dict"),
        ({"history": 5}, "its history is not a list of epoch rows"),
        ({"best": []}, "its best is not the best epoch"),
        ({"config": None}, "its config is not a mapping of settings"),
    ]
    path = tmp_path / "best.pt"
    for change, message in cases:
        torch.save({**good, **change}, path)
        for load in (load_checkpoint, load_model):
            with pytest.raises(CheckpointError, match=f"^{path}: .*{message}"):
                load(path)
        assert main(["evaluate", str(path), "--data", data, "--device", "cpu",
                     "--no-progress"]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert str(path) in err and message in err and len(err.strip().splitlines()) == 1, err
