"""The command line as a user meets it: one-line errors, a quick start, logs that read well."""

import subprocess
import sys

import pytest
import torch
from torchvision import models

from rcnn.cli import main
from tests.helpers import TINY_FLAGS as TINY
from tests.helpers import copy_run, run_python


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom rcnn.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['prepare', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules, 'cv2' in sys.modules)"
    )
    assert run_python(code).splitlines()[-1] == "False False"


def test_cached_prepare_does_not_import_torch(prepared, tmp_path):
    voc, cache = prepared.parent / "voc", prepared.parent / "cache"
    argv = ["prepare", "--voc-root", str(voc), "--out", str(tmp_path / "out"), "--mode", "fast",
            "--cache-dir", str(cache), "--no-progress"]  # fmt: skip
    code = f"import sys\nfrom rcnn.cli import main\nmain({argv!r})\nprint('torch' in sys.modules)"
    assert run_python(code).splitlines()[-1] == "False"


def test_redirected_training_log_has_the_recipe_lines(prepared, tmp_path):
    log = tmp_path / "train.log"
    flags = [f for f in TINY if f != "--no-progress"]  # bars wanted, but stderr is a file
    cmd = [sys.executable, "-m", "rcnn", "train", "--data", str(prepared),
           "--out", str(tmp_path / "run"), "--epochs", "1", *flags]  # fmt: skip
    with log.open("w") as f:
        assert subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode == 0
    text = log.read_text()
    assert "\r" not in text, "no progress bar updates in a redirected log"
    lines = text.splitlines()
    assert "Epoch 0/0" in lines
    assert any(line.startswith("train Loss: ") for line in lines)
    assert any(line.startswith("val Loss: ") for line in lines)


@pytest.fixture
def run_folder(one_epoch_model):
    """The session's one-epoch run, trained with the flags of TINY (read-only here)."""
    return one_epoch_model


def bad_invocations(prepared, run, tmp_path):
    """``(argv, expected message)`` for mistakes a user makes."""
    text = tmp_path / "notes.txt"
    text.write_text("not weights\n")
    resnet = tmp_path / "resnet.pth"
    torch.save(models.resnet18().state_dict(), resnet)
    data, new = str(prepared), str(tmp_path / "new")
    train = ["train", "--data", data, "--out", new, "--epochs", "1"]
    return [
        ([*train, *TINY, "--val-max", "-1"], "--val-max must be >= 0"),
        ([*train, *TINY, "--device", "gpu0"], "--device 'gpu0' is not a device"),
        ([*train, *TINY, "--device", "gpu"], "--device 'gpu' is not a device"),
        ([*train, *TINY, "--weights", str(text)], "notes.txt: not a readable state dict"),
        ([*train, *TINY, "--weights", str(resnet)], "resnet.pth does not fit"),
        ([*train, "--backbone", "fasterrcnn_resnet50_fpn", "--weights", "none"],
         "not a torchvision ImageNet classifier"),
        ([*train, *TINY, "--backbone", "vit_b_16"], "vit_b_16 cannot take --input-size 64"),
        (["train", "--data", f"{data}/train", "--out", new, *TINY], "is a single region store"),
        (["train", "--data", data, "--out", str(run), *TINY], "already holds a run"),
        (["train", "--resume", str(run), "--lr", "0.5"], "a resumed run keeps it"),
        (["train", "--resume", str(run), "--optimizer", "sgd"], "--optimizer sgd"),
        (["train", "--resume", str(run), "--epochs", "1"], "has already trained 1 epochs"),
        (["train", "--resume", str(run), "--preset", "adam"], "--preset cannot be combined"),
        (["train", "--resume", str(run), "--out", new], "is not --resume"),
        # --out naming the run's own folder is accepted (the next check is what stops it).
        (["train", "--resume", str(run), "--out", f"{run}/", "--epochs", "1"], "already trained"),
        (["evaluate", str(run / "model.pth"), "--data", data], "holds only weights"),
    ]  # fmt: skip


def test_user_errors_are_one_line_with_status_2(prepared, run_folder, tmp_path, capsys):
    before = (run_folder / "last.pt").read_bytes()
    for argv, message in bad_invocations(prepared, run_folder, tmp_path):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"rcnn {argv[0]}: error: ") and message in err, (argv, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert (run_folder / "last.pt").read_bytes() == before, "the existing run is untouched"
    assert not (tmp_path / "new" / "config.json").exists()


def test_offline_imagenet_weights_are_one_line(prepared, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    flags = [f for f in TINY if f not in ("--weights", "none")]
    argv = ["train", "--data", str(prepared), "--out", str(tmp_path / "r"), *flags,
            "--backbone", "alexnet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Offline?" in err and len(err.splitlines()) == 1, err


def test_verbose_shows_the_traceback(prepared, tmp_path, capsys):
    argv = ["-v", "train", "--data", str(prepared), "--out", str(tmp_path / "r"), "--lr", "-1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("--lr must be > 0, got -1.0")


def test_overwrite_replaces_a_run(prepared, run_folder, tmp_path):
    copy = copy_run(run_folder, tmp_path / "run")
    argv = ["train", "--data", str(prepared), "--out", str(copy), "--epochs", "1", *TINY]
    assert main([*argv, "--overwrite", "--seed", "3"]) == 0
    assert (copy / "last.pt").read_bytes() != (run_folder / "last.pt").read_bytes()
    assert '"seed": 3' in (copy / "config.json").read_text()


def test_the_commands_reference_is_the_parsers_help():
    from tools.commands_doc import DOC, commands_markdown

    assert DOC.read_text() == commands_markdown(), "run python tools/commands_doc.py"


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["test", "run", "--out", "o", "--voc-root", "v", "--scorer", "svm",
          "--score-thresh", "nan"], "--score-thresh"),
        (["test", "run", "--out", "o", "--voc-root", "v", "--nms", "NaN"], "--nms"),
        (["ablate", "run", "--data", "d", "--out", "o", "--voc-root", "v", "--nms", "nan"],
         "--nms"),
        (["prepare", "--voc-root", "v", "--out", "o", "--neg-min-area", "nan"], "--neg-min-area"),
        (["train", "--data", "d", "--out", "o", "--momentum", "nan"], "--momentum"),
        (["train-svm", "run", "--data", "d", "--C", "nan"], "--C"),
        (["train-bbox", "run", "--data", "d", "--min-iou", "nan"], "--min-iou"),
    ],
)  # fmt: skip
def test_nan_is_refused_by_every_number_flag(argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing there: refused before any file is looked at
    assert main(argv) == 2
    assert f"error: {flag} must be a number, got nan" in capsys.readouterr().err


def test_nan_is_refused_by_the_settings_of_the_api():
    from rcnn.data.labels import LabelConfig
    from rcnn.detection.config import DetectorConfig
    from rcnn.errors import ConfigError
    from rcnn.heads.config import BBoxConfig, SVMConfig

    nan = float("nan")
    cases = [
        (lambda: DetectorConfig(scorer="svm", score_thresh=nan), "--score-thresh"),
        (lambda: SVMConfig(bias=nan), "--bias"),
        (lambda: SVMConfig(neg_iou=nan), "--neg-iou"),
        (lambda: BBoxConfig(feature_norm=nan), "--feature-norm"),
        (lambda: LabelConfig(neg_min_area_frac=nan), "--neg-min-area"),
    ]
    for make, flag in cases:
        with pytest.raises(ConfigError, match=f"^{flag} must be a number, got nan$"):
            make()
