import torch
from torch import nn
from torchvision import models

from rcnn.demo import DemoConfig, run_demo


def test_demo_runs_end_to_end_and_says_where_things_are(tmp_path, capsys):
    cfg = DemoConfig(
        out=str(tmp_path / "demo"), images=12, epochs=1, input_size=64, device="cpu", progress=False
    )
    found = run_demo(cfg)
    out = capsys.readouterr().out
    assert "random initialisation" in out or "ImageNet weights" in out
    for line in ("synthetic VOC dataset", "Demo finished in", "fc7, fine-tuned, + box regression",
                 "paper, VOC2007", "report.md"):  # fmt: skip
        assert line in out
    regions = found["regions"]
    assert 0 <= regions["balanced_accuracy"] <= 1 and regions["count"] > 0
    demo = tmp_path / "demo"
    run = demo / "run"
    for name in ("model.pth", "curves.png", "metrics.csv", "svm/svm.npz", "bbox/bbox.npz"):
        assert (run / name).is_file(), name
    assert (demo / "evaluate" / "examples.png").is_file()
    ablation = demo / "ablation"
    for name in ("fine-tuned/softmax/comp4_det_test_car.txt", "fine-tuned/fc7/metrics.json",
                 "initial/pool5/metrics.json", "fine-tuned/fc7-bbox/pr.png",
                 "detections.png", "ablation.md", "ablation.png"):  # fmt: skip
        assert (ablation / name).is_file(), name
    assert 0 <= found["test"]["map_07"] <= 1
    report = (demo / "report.md").read_text()
    assert "## The paper's Table 2" in report
    # One test image's trip (`rcnn explain` of the final detector), shown in the report.
    assert (demo / "explain" / "explain.png").is_file() and "explain/explain.png" in report
    assert report.count("## One test image's trip") == 1
    # The demo fine-tunes AlexNet: its model.pth loads into torchvision's own AlexNet.
    reference = models.alexnet()
    reference.classifier[6] = nn.Linear(4096, 3)  # background, car, bus
    reference.load_state_dict(torch.load(run / "model.pth", weights_only=True), strict=True)
