import torch
from torch import nn
from torchvision import models

from rcnn.demo import DemoConfig, run_demo


def test_demo_runs_end_to_end_and_says_where_things_are(tmp_path, capsys):
    cfg = DemoConfig(
        out=str(tmp_path / "demo"), images=12, epochs=1, input_size=64, device="cpu", progress=False
    )
    metrics = run_demo(cfg)
    out = capsys.readouterr().out
    assert "random initialisation" in out or "ImageNet weights" in out
    for line in ("[1/6]", "[2/6] train", "[3/6]", "[4/6]", "[5/6]", "[6/6]", "Demo finished in",
                 "mean", "fc7, fine-tuned, + box regression", "paper, VOC2007"):  # fmt: skip
        assert line in out
    assert 0 <= metrics["balanced_accuracy"] <= 1 and metrics["count"] > 0
    run = tmp_path / "demo" / "run"
    for name in ("model.pth", "curves.png", "metrics.csv", "eval-val/examples.png"):
        assert (run / name).is_file(), name
    test = tmp_path / "demo" / "test"
    for name in ("fine-tuned/softmax/comp4_det_test_car.txt", "fine-tuned/fc7/metrics.json",
                 "initial/pool5/metrics.json", "fine-tuned/fc7-bbox/pr.png",
                 "detections.png", "ablation.md", "ablation.png"):  # fmt: skip
        assert (test / name).is_file(), name
    assert 0 <= metrics["test"]["map_07"] <= 1
    # The demo fine-tunes AlexNet: its model.pth loads into torchvision's own AlexNet.
    reference = models.alexnet()
    reference.classifier[6] = nn.Linear(4096, 3)  # background, car, bus
    reference.load_state_dict(torch.load(run / "model.pth", weights_only=True), strict=True)
