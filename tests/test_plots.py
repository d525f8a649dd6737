import numpy as np
import pytest
from matplotlib.image import imread

from rcnn.evaluation.metrics import pr_curves
from rcnn.evaluation.plots import (
    CORRECT_COLOR,
    WRONG_COLOR,
    plot_compare,
    plot_curves,
    plot_pr,
    plot_predictions,
    prediction_title,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["background", "car"]


def history(epochs=3, offset=0.0):
    return [
        {
            "epoch": e,
            "train_loss": 1.0 / e + offset,
            "train_acc": 0.6 + 0.1 * e,
            "val_loss": 1.2 / e + offset,
            "val_acc": 0.55 + 0.1 * e,
            "val_balanced_acc": 0.5 + 0.1 * e - offset,
        }
        for e in range(1, epochs + 1)
    ]


def assert_png(path, min_width=200, min_height=150):
    """The file is a lone PNG in its folder (no temp file left) and decodes to RGB(A)."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[1] >= min_width and image.shape[0] >= min_height
    assert image.std() > 0  # something was drawn


def test_plot_curves(tmp_path):
    path = tmp_path / "curves.png"
    plot_curves(history(), path)
    assert_png(path, min_width=800)


@pytest.mark.parametrize(
    "rows",
    [
        history(1),
        # Validation skipped on some epochs, and a row with no epoch number.
        [
            {"epoch": 1, "train_loss": 0.9, "train_acc": 0.7, "val_loss": None, "val_acc": None},
            {"train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.6, "val_balanced_acc": None},
        ],
        [{"epoch": 1}],
    ],
    ids=["one-epoch", "none-values", "empty-row"],
)
def test_plot_curves_sparse_history(tmp_path, rows):
    path = tmp_path / "curves.png"
    plot_curves(rows, path)
    assert_png(path)


def test_plot_curves_replaces_an_existing_file(tmp_path):
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")
    plot_curves(history(2), path)
    assert_png(path)


def test_plot_pr(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=30)
    labels = np.r_[0, 1, 2, rng.integers(0, 3, size=27)]
    curves = pr_curves(probs, labels, ["background", "car", "dog"])
    path = tmp_path / "sub" / "pr.png"
    plot_pr(curves, path, title="val PR")
    assert_png(path)


def test_plot_pr_skips_a_class_without_positives(tmp_path):
    curves = pr_curves(np.array([[0.8, 0.2], [0.3, 0.7]]), np.array([0, 0]), NAMES)
    path = tmp_path / "pr.png"
    plot_pr(curves, path)
    assert_png(path)


def test_plot_compare(tmp_path):
    sparse = history(2, offset=0.1)
    sparse[1]["val_balanced_acc"] = None
    runs = {"lr 1e-3": history(4), "lr 1e-2": sparse, "one epoch": history(1), "empty": []}
    path = tmp_path / "compare.png"
    plot_compare(runs, path)
    assert_png(path, min_width=1200)


def test_plot_predictions(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [(20, 30), (40, 16), (8, 8), (33, 21), (12, 50)]
    crops = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]
    crops.append(rng.integers(0, 256, size=(10, 10), dtype=np.uint8))  # gray
    path = tmp_path / "preds.png"
    plot_predictions(
        crops,
        [1, 0, 1, 0, 0, 1],
        [1, 1, 0, 0, 0, 1],
        [0.93, 0.6, 0.7, 0.99, 0.8, 0.51],
        NAMES,
        path,
        ncols=4,
    )
    assert_png(path, min_width=300)


def test_plot_predictions_rejects_mismatched_lengths(tmp_path):
    crop = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="equal lengths"):
        plot_predictions([crop], [0, 1], [0], [0.5], NAMES, tmp_path / "p.png")
    with pytest.raises(ValueError, match="no crops"):
        plot_predictions([], [], [], [], NAMES, tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == []


def test_prediction_title():
    assert prediction_title(0, 1, 0.934, NAMES) == ("pred car 0.93 / true bg", WRONG_COLOR)
    assert prediction_title(1, 1, 0.5, NAMES) == ("pred car 0.50 / true car", CORRECT_COLOR)
