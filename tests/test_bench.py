import json

import numpy as np

from rcnn.bench import make_scale_regions
from rcnn.cli import main
from rcnn.data.regions import RegionSet


def test_scale_regions_and_bench_commands(tmp_path, capsys):
    data = make_scale_regions(tmp_path / "scale", images=3, regions_per_image=400, seed=0)
    train = RegionSet.load(data / "train")
    assert len(train) == 1200 and len(train.image_paths) == 3
    assert (train.boxes[:, 2] > train.boxes[:, 0]).all() and train.boxes[:, 2].max() <= 500
    assert 0.15 < np.mean(train.labels > 0) < 0.35
    for what in ("loader", "train"):
        args = [
            "bench",
            what,
            "--data",
            str(data),
            "--device",
            "cpu",
            "--batches",
            "2",
            "--input-size",
            "64",
            "--json",
        ]
        assert main(args) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["regions"] == 2 * 128 and result["regions_per_s"] > 0
        assert result["pipeline"] == "ThreadFeeder" and result["peak_rss_mb"] > 0
