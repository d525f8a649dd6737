"""`rcnn ablate`: the paper's Table 2, each row what `rcnn test` gives for its scorer."""

import json

import pytest

from rcnn.cli import main
from rcnn.detection.ablate import ROWS
from rcnn.errors import RcnnError
from rcnn.modeling.checkpoint import initial_network
from tests.helpers import copy_run

FLAGS = ["--device", "cpu", "--workers", "1", "--no-progress", "--no-amp"]


@pytest.fixture(scope="module")
def ablation(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    voc, cache = str(trained / "voc"), str(trained / "cache")
    assert main(["prepare", "--voc-root", voc, "--split", "train", "--preset", "paper",
                 "--mode", "fast", "--cache-dir", cache, "--out", str(root / "paper"),
                 "--no-progress"]) == 0  # fmt: skip
    common = ["--voc-root", voc, "--cache-dir", cache, *FLAGS]
    argv = ["ablate", str(trained / "run"), "--data", str(root / "paper"), "--train-split",
            "train", "--out", str(root / "out"), *common]  # fmt: skip
    assert main(argv) == 0
    return root, common


def test_the_ablation_has_the_papers_rows_beside_its_numbers(ablation, capsys):
    root, _ = ablation
    found = json.loads((root / "out" / "ablation.json").read_text())
    assert [r["row"] for r in found["rows"]] == [f"{r.network}/{r.name}" for r in ROWS]
    assert len(ROWS) == 8
    assert found["initial_network"] == "the run's initial weights (initial.pt)"
    paper = {row["title"]: row["paper_voc2007_map"] for row in found["rows"]}
    assert paper["fc7, fine-tuned, + box regression"] == 58.5
    assert paper["pool5, not fine-tuned"] == 44.2
    table = (root / "out" / "ablation.md").read_text()
    assert "paper, VOC2007" in table and table.count("\n| ") == 10  # header, rule and eight rows
    for network, layer in (("initial", "pool5"), ("fine-tuned", "fc6")):
        svm = json.loads((root / "out" / "heads" / network / layer / "svm.json").read_text())
        assert svm["layer"] == layer and svm["features"] == "computed on the fly"
    assert (root / "out" / "ablation.png").is_file()


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.network}-{r.name}")
def test_each_row_is_what_rcnn_test_reports_for_its_scorer(ablation, trained, row, tmp_path):
    root, common = ablation
    out = root / "out"
    model = trained / "run" / ("initial.pt" if row.network == "initial" else "best.pt")
    argv = ["test", str(model), "--out", str(tmp_path / "t"), *common]
    if row.layer:
        argv += ["--scorer", "svm", "--svm", str(out / "heads" / row.network / row.layer)]
    if row.bbox:
        argv += ["--bbox-reg", str(trained / "run" / "bbox")]
        if not (trained / "run" / "bbox" / "bbox.npz").is_file():  # trained by the ablation
            argv[-1] = str(out / "heads" / "fine-tuned" / "bbox")
    assert main(argv) == 0
    alone = json.loads((tmp_path / "t" / "metrics.json").read_text())
    found = json.loads((out / "ablation.json").read_text())["rows"]
    (row_metrics,) = [r for r in found if r["row"] == f"{row.network}/{row.name}"]
    assert row_metrics["map_07"] == alone["map_07"] and row_metrics["map"] == alone["map"]


def test_a_run_without_its_initial_weights_is_named(trained, tmp_path):
    run = copy_run(trained / "run", tmp_path / "run")
    (run / "initial.pt").unlink()
    with pytest.raises(RcnnError, match="has no initial.pt, the weights it started from"):
        initial_network(run, tmp_path)


def test_an_ablation_of_other_settings_is_refused_before_any_work(ablation, trained, capsys):
    """Another --nms (or another --data) into the same --out: refused before a head is
    trained, the folder as it was; --scorer, --svm and a checkpoint file are named."""
    root, common = ablation
    out = root / "out"
    argv = ["ablate", str(trained / "run"), "--data", str(root / "paper"), "--train-split",
            "train", "--out", str(out), *common]  # fmt: skip
    table = (out / "ablation.md").read_text()
    assert main(argv) == 0  # the same settings: the finished rows stand, in the same order
    assert (out / "ablation.md").read_text() == table
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert main([*argv, "--nms", "0.5"]) == 2
    assert f"--out {out} holds an ablation made otherwise (--nms)" in (capsys.readouterr().err)
    after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before
    assert main([*argv, "--scorer", "svm"]) == 2
    assert "--scorer and --svm are for `rcnn test`" in capsys.readouterr().err
    argv[1] = str(trained / "run" / "best.pt")
    assert main(argv) == 2
    assert "needs the run folder of `rcnn train`" in capsys.readouterr().err


def test_data_without_the_train_split_names_the_flag_that_chooses_it(ablation, trained, capsys):
    root, common = ablation
    argv = ["ablate", str(trained / "run"), "--data", str(root / "paper"), "--out",
            str(root / "other"), *common]  # fmt: skip
    assert main(argv) == 2  # --train-split trainval by default, and the store has train only
    err = capsys.readouterr().err
    assert "has no split 'trainval' (it has train); choose one with --train-split," in err
    assert not (root / "other").exists()
