"""R-CNN's heads: the box transform, ridge regression, the SVMs and hard-negative mining, and
the feature store they read."""

import csv
import json
import logging
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from rcnn.cli import main
from rcnn.files import file_digest
from rcnn.heads.bbox_regression import BBoxRegressor, fit_ridge
from rcnn.heads.config import BBoxConfig, SVMConfig
from rcnn.heads.feature_store import FeatureStore, FeatureStoreError
from rcnn.heads.negatives import NegativeCache, NegativePool
from rcnn.heads.svm import fit_svm, svm_objective
from rcnn.modeling.checkpoint import save_checkpoint
from rcnn.modeling.features import feature_dims
from rcnn.ops.boxes import decode_boxes, encode_boxes
from rcnn.runtime.config import InferenceConfig
from tests.helpers import copy_run, one_process, same_files, torchrun_steps


def random_boxes(rng, n):
    xy = rng.uniform(0, 200, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(4, 120, (n, 2))], axis=1)


def test_box_transform_round_trips_and_matches_torchvision():
    rng = np.random.default_rng(0)
    proposals, targets = random_boxes(rng, 50), random_boxes(rng, 50)
    deltas = encode_boxes(proposals, targets)
    np.testing.assert_allclose(decode_boxes(proposals, deltas), targets, atol=1e-9)
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    theirs = coder.encode_single(torch.from_numpy(targets), torch.from_numpy(proposals))
    np.testing.assert_allclose(deltas, theirs.numpy(), rtol=1e-9, atol=1e-12)
    back = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(proposals))
    np.testing.assert_allclose(decode_boxes(proposals, deltas), back.numpy(), atol=1e-9)
    # Hand-computed: a box twice as wide, shifted right by half its width.
    hand = encode_boxes([[0, 0, 10, 10]], [[5, 0, 25, 10]])
    assert hand.tolist() == [[1.0, 0.0, np.log(2), 0.0]]


def test_ridge_weights_are_the_closed_form():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 4))
    w, b = fit_ridge(x, y, ridge=3.0)
    # Closed form with an unpenalized intercept: centre, then solve (X'X + lambda I) W = X'Y.
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = np.linalg.solve(xc.T @ xc + 3.0 * np.eye(6), xc.T @ yc)
    np.testing.assert_allclose(w, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b, y.mean(0) - x.mean(0) @ expected, rtol=1e-4, atol=1e-5)


def test_regressor_moves_boxes_and_clips_them(tmp_path):
    weights = np.zeros((1, 3, 4), np.float32)
    intercepts = np.array([[0.5, 0.0, 0.0, 0.0]], np.float32)  # half a width to the right
    bbox = BBoxRegressor(weights, intercepts, 1.0, ["car"])
    moved = bbox.apply(np.array([[0, 0, 10, 10], [90, 0, 100, 10]]), np.zeros((2, 3)), (100, 50))
    np.testing.assert_allclose(moved[:, 0], [[5, 0, 15, 10], [95, 0, 100, 10]])
    bbox.save(tmp_path)
    np.testing.assert_array_equal(BBoxRegressor.load(tmp_path).intercepts, intercepts)


def separable(rng, n=60, dim=5):
    w = rng.normal(size=dim)
    x = rng.normal(size=(n, dim))
    y = np.where(x @ w > 0, 1.0, -1.0)
    x += 0.5 * y[:, None] * w / np.linalg.norm(w)  # a clear gap between the classes
    return x, y


def test_svm_separates_a_separable_set():
    x, y = separable(np.random.default_rng(2))
    w, b = fit_svm(x, y, SVMConfig(C=10.0, bias=1.0))
    assert (np.sign(x @ w + b) == y).all()
    assert (y * (x @ w + b)).min() > 0.5  # a margin, not a tie


def test_svm_minimizes_its_objective_with_c_and_the_positive_weight():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(80, 4)), np.where(rng.random(80) < 0.3, 1.0, -1.0)
    cfg = SVMConfig(C=0.5, pos_weight=2.0, bias=10.0)
    w, b = fit_svm(x, y, cfg)
    best = svm_objective(w, b, x, y, cfg)
    for _ in range(200):  # no nearby point does better: the documented objective is minimized
        dw, db = rng.normal(scale=1e-2, size=4), rng.normal(scale=1e-1)
        assert svm_objective(w + dw, b + db, x, y, cfg) >= best - 1e-4
    # The positive weight matters: weighing positives more moves the boundary to negatives.
    w1, b1 = fit_svm(x, y, SVMConfig(C=0.5, pos_weight=1.0))
    w4, b4 = fit_svm(x, y, SVMConfig(C=0.5, pos_weight=4.0))
    assert (x @ w4 + b4 > 0).sum() > (x @ w1 + b1 > 0).sum()
    # And C: a smaller C regularizes harder.
    small, _ = fit_svm(x, y, SVMConfig(C=0.01))
    assert np.linalg.norm(small) < np.linalg.norm(w)


def test_negative_cache_adds_new_hard_ones_and_drops_easy_ones():
    pool = NegativePool(2, regions=4000)
    cache = NegativeCache(pool)
    cache.add(np.array([0, 1, 2, 3]), np.zeros((4, 2)))
    # Hard negatives found in a block: 2 and 3 are cached already; 7 and 9 are new.
    assert cache.add(np.array([2, 3, 7, 9]), np.ones((4, 2))) == 2
    assert cache.rows.tolist() == [0, 1, 2, 3, 7, 9] and cache.features.dtype == np.float16
    assert cache.features[:, 0].tolist() == [0, 0, 0, 0, 1, 1]
    # After a training, cached negatives scoring below -1.2 are easy: 0 and 3 go (-1.2 stays).
    scores = np.array([-1.3, -1.1, -0.5, -2.0, -1.2, 0.3])
    assert cache.evict(scores, easy=-1.2) == 2
    assert cache.rows.tolist() == [1, 2, 7, 9] and len(cache) == 4
    assert cache.scores.tolist() == pytest.approx([-1.1, -0.5, -1.2, 0.3])  # kept with them
    assert pool.nbytes == 4 * pool.row_bytes  # the freed regions' memory is free
    # Growing past the pool's buffers keeps every entry.
    many = np.arange(100, 3100)
    assert cache.add(many, np.full((3000, 2), 5.0), np.full(3000, -0.9)) == 3000
    assert cache.rows[:4].tolist() == [1, 2, 7, 9] and cache.rows[-1] == 3099
    assert cache.features[-1].tolist() == [5, 5] and len(cache) == 3004


def test_classes_keeping_one_negative_share_its_memory():
    pool = NegativePool(3, regions=10)
    car, bus = NegativeCache(pool), NegativeCache(pool)
    x = np.arange(12.0).reshape(4, 3)
    car.add(np.array([1, 2, 3, 4]), x)
    bus.add(np.array([3, 4, 5]), np.concatenate([x[2:], [[9, 9, 9]]]))
    assert pool.used == 5 and pool.nbytes == 5 * pool.row_bytes  # 3 and 4 held once
    np.testing.assert_array_equal(bus.features[:2], car.features[2:])
    car.keep(np.array([True, True, False, False]))  # car drops 3 and 4; bus keeps them
    assert pool.used == 5 and bus.features[:2].tolist() == x[2:].tolist()
    bus.keep(np.array([False, True, True]))  # bus drops 3: nobody holds it any more
    assert pool.used == 4 and pool.slot_of[3] == -1
    car.add(np.array([6]), np.full((1, 3), 7.0))  # its memory serves another region
    assert pool.used == 5 and car.features[-1].tolist() == [7, 7, 7]


def test_the_budget_drops_the_easiest_negatives_of_all_classes():
    from rcnn.heads.mining import hold_budget
    from rcnn.heads.svm import ClassTrainer

    pool = NegativePool(4, regions=100)
    cfg = SVMConfig()
    car, bus = (ClassTrainer(n, np.zeros((1, 4), np.float16), cfg, pool) for n in ("car", "bus"))
    car.add(np.arange(0, 10), np.ones((10, 4)), np.linspace(-1, 0, 10))  # regions 0-9
    bus.add(np.arange(5, 15), np.ones((10, 4)), np.linspace(-0.95, 0.05, 10))  # 5-14
    assert pool.used == 15
    budget = 10 * pool.row_bytes
    dropped = hold_budget(pool, [car, bus], budget)
    assert pool.nbytes <= 0.9 * budget and dropped == car.over_budget + bus.over_budget
    # What went is what scored lowest, whichever the class: every kept score is above every
    # dropped one.
    kept = np.concatenate([car.cache.scores, bus.cache.scores])
    every = np.concatenate([np.linspace(-1, 0, 10), np.linspace(-0.95, 0.05, 10)])
    assert kept.min() > np.sort(every)[dropped - 1]
    assert hold_budget(pool, [car, bus], budget) == 0  # under it: nothing more


@pytest.fixture(scope="module")
def heads_run(prepared, one_epoch_model, tmp_path_factory):
    """The one-epoch run (as ``run``) and the paper-preset regions (ground-truth boxes
    included, as ``regions``)."""
    from rcnn.data.config import PrepareConfig, ProposalConfig
    from rcnn.data.labels import PRESETS
    from rcnn.data.prepare import run_prepare

    root = tmp_path_factory.mktemp("heads")
    voc, cache = prepared.parent / "voc", prepared.parent / "cache"
    run_prepare(PrepareConfig(str(voc), str(root / "regions"), labels=PRESETS["paper"],
                              proposals=ProposalConfig("fast"), cache_dir=str(cache), workers=1,
                              progress=False))  # fmt: skip
    copy_run(one_epoch_model, root / "run")  # tests here write into the run folder
    return root


FLAGS = ["--device", "cpu", "--no-progress", "--amp"]
CPU = InferenceConfig(device="cpu")


def test_features_equal_the_networks_activations(heads_run, prepared):
    from rcnn.data.feeders import make_feeder
    from rcnn.data.regions import load_split
    from rcnn.data.warps import ImageStore
    from rcnn.modeling.checkpoint import load_model

    run = heads_run / "run"
    out = heads_run / "feats"
    argv = ["features", str(run), "--data", str(heads_run / "regions"), "--out", str(out),
            "--pool5", "--device", "cpu", "--no-amp", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    regions = load_split(heads_run / "regions", "train")
    rows = np.array([0, 7, len(regions) - 1])
    fc7, pool5 = FeatureStore(out, "train", "fc7"), FeatureStore(out, "train", "pool5")
    # The same warped regions through the plain model, layer by layer.
    loaded = load_model(run)
    feeder = make_feeder(regions, [rows], loaded.spec.warp(), torch.device("cpu"),
                         store=ImageStore.of(regions))  # fmt: skip
    images, _ = next(iter(feeder))
    model = loaded.model.eval()
    with torch.no_grad():
        flat = torch.flatten(model.avgpool(model.features(images)), 1)
        expected_fc7 = model.classifier[:6](flat)
    np.testing.assert_allclose(pool5.rows(rows), flat.numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(fc7.rows(rows), expected_fc7.numpy(), rtol=2e-3, atol=2e-3)
    assert feature_dims(model) == {"pool5": 288, "fc6": 128, "fc7": 128}  # the tiny backbone's
    meta = json.loads((out / "meta.json").read_text())
    assert meta["layers"] == {"fc7": 128, "pool5": 288}


@pytest.mark.precision
def test_interrupted_features_resume_to_identical_files(heads_run, tmp_path, native_bf16):
    from rcnn.heads.config import FeaturesConfig
    from rcnn.heads.extract import run_features

    out = tmp_path / "feats"
    # Small chunks, so that a tiny set has several; the store keeps its chunk size. The
    # precision is automatic: bfloat16 or float32, as this machine (or RCNN_NATIVE_BF16) says.
    cfg = FeaturesConfig(model=str(heads_run / "run"), data=str(heads_run / "regions"),
                         out=str(out), inference=CPU, chunk=256, progress=False)  # fmt: skip
    run_features(cfg)
    chunks = sorted((out / "train" / "fc7").glob("*.npy"))
    assert len(chunks) >= 2
    first = {p.name: p.read_bytes() for p in chunks}
    made_in = json.loads((out / "meta.json").read_text())["precision"]
    assert made_in == ("bfloat16" if native_bf16 else "float32")
    # Killed part-way: the last chunks never written, a temporary file left behind.
    for p in chunks[1:]:
        p.unlink()
    (out / "train" / "fc7" / ".000001.npy.abcd1234.tmp").write_bytes(b"half")
    kept = chunks[0].stat().st_mtime_ns
    argv = ["features", str(heads_run / "run"), "--data", str(heads_run / "regions"), "--out",
            str(out), "--device", "cpu", "--no-progress"]  # fmt: skip
    # The other precision would mix chunks that differ by about 0.3%: refused, nothing written.
    other = "--amp" if made_in == "float32" else "--no-amp"
    assert main([*argv, other]) == 2
    assert sorted(p.name for p in (out / "train" / "fc7").glob("*.npy")) == [chunks[0].name]
    # Automatic precision resumes in the store's own, whatever this machine's default is.
    assert main(argv) == 0
    assert {p.name: p.read_bytes() for p in sorted((out / "train" / "fc7").glob("*.npy"))} == first
    assert chunks[0].stat().st_mtime_ns == kept
    assert not list(out.rglob("*.tmp")), "a successful run removes interrupted writes' leftovers"


def test_train_svm_and_bbox_then_detect_with_them(heads_run, capsys):
    run, data = heads_run / "run", heads_run / "regions"
    feats = ["--features", str(heads_run / "feats")]
    assert main(["train-svm", str(run), "--data", str(data), *feats, *FLAGS]) == 0
    log = capsys.readouterr().out
    assert "pass" in log and "SVMs in" in log and "features from" in log
    assert (run / "svm" / "svm.npz").is_file() and (run / "svm" / "svm_log.csv").is_file()
    assert main(["train-bbox", str(run), "--data", str(data), *feats, *FLAGS]) == 0
    assert "box regressors in" in capsys.readouterr().out
    from rcnn.heads.svm import SVMModel

    svm = SVMModel.load(run / "svm")
    assert svm.weights.shape == (1, 128) and svm.scale > 0
    rows = json.loads((run / "svm" / "svm.json").read_text())
    assert rows["config"]["C"] == 0.001 and rows["config"]["pos_weight"] == 2.0
    from rcnn.data.regions import RegionSet

    image = RegionSet.load(data / "train").image_paths[0]
    argv = ["detect", str(run), image, "--out", str(heads_run / "det"), "--scorer", "svm",
            "--bbox-reg", str(run / "bbox"), "--score-thresh", "-100", *FLAGS]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((heads_run / "det" / "detections.jsonl").read_text())
    assert record["detections"], "every box passes a threshold of -100"
    box = np.array(record["detections"][0]["box"])
    assert (box[:2] >= 0).all() and box[2] <= record["width"] and box[3] <= record["height"]


def test_heads_refuse_what_does_not_fit(heads_run, prepared, tmp_path, capsys):
    run = heads_run / "run"
    # Features of another model: the same store, but a retrained model file.
    other = tmp_path / "other"

    shutil.copytree(
        run, other, ignore=shutil.ignore_patterns("svm", "bbox", "features", "*.pth", "last.pt")
    )
    best = torch.load(other / "best.pt", weights_only=True)
    best["model"]["classifier.6.bias"] += 1e-3  # same architecture, other weights
    save_checkpoint(other / "best.pt", best)  # as a run would: its record follows
    cases = [
        (["train-svm", str(other), "--data", str(heads_run / "regions"), "--features",
          str(heads_run / "feats"), *FLAGS], "holds features of another model"),
        (["train-svm", str(run), "--data", str(prepared), "--features", str(tmp_path / "f"),
          "--overwrite", *FLAGS], "ground-truth"),
        (["train-svm", str(run), "--data", str(tmp_path / "nothing"), "--overwrite", *FLAGS],
         "not found"),
        # a device that is not there, even where a feature store means no network runs
        (["train-bbox", str(run), "--data", str(heads_run / "regions"), "--features",
          str(heads_run / "feats"), "--out", str(tmp_path / "b"), "--device", "nodevice",
          "--no-progress"], "--device 'nodevice' is not a device"),
        # a folder of other files is not made a feature store
        (["train-svm", str(run), "--data", str(heads_run / "regions"), "--features", str(run),
          "--overwrite", *FLAGS], "holds other files and no feature store"),
        # SVMs already there (maybe of another layer or network): replaced only when asked
        (["train-svm", str(run), "--data", str(heads_run / "regions"), *FLAGS],
         "svm already holds svm.npz, svm.json, svm_log.csv; pass --overwrite"),
        (["train-bbox", str(run), "--data", str(heads_run / "regions"), "--out",
          str(run / "svm"), *FLAGS], "svm already holds svm.npz"),
    ]  # fmt: skip
    svms = (run / "svm" / "svm.npz").read_bytes()
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert (run / "svm" / "svm.npz").read_bytes() == svms
    with pytest.raises(FeatureStoreError, match="no pool5 features|run `rcnn features`"):
        FeatureStore(tmp_path / "f", "train", "pool5")


def test_svm_of_other_classes_is_refused(heads_run, tmp_path):
    from rcnn.detection.config import DetectorConfig
    from rcnn.detection.detector import Detector
    from rcnn.errors import RcnnError
    from rcnn.heads.svm import SVMModel
    from rcnn.modeling.checkpoint import load_model

    svm = SVMModel(np.zeros((2, 4096), np.float32), np.zeros(2, np.float32), 1.0, ["car", "bus"])
    svm.save(tmp_path / "svm")
    cfg = DetectorConfig(scorer="svm", svm=str(tmp_path / "svm"), inference=CPU)
    with pytest.raises(RcnnError, match="trained for classes"):
        Detector(load_model(heads_run / "run"), cfg)
    wrong = SVMModel(np.zeros((1, 100), np.float32), np.zeros(1, np.float32), 1.0, ["car"])
    wrong.save(tmp_path / "svm2")
    loaded = load_model(heads_run / "run")
    with pytest.raises(RcnnError, match="100-d features"):
        Detector(loaded, DetectorConfig(scorer="svm", svm=str(tmp_path / "svm2"), inference=CPU))
    with pytest.raises(FileNotFoundError, match="rcnn train-svm"):
        Detector(loaded, DetectorConfig(scorer="svm", svm=str(tmp_path / "none"), inference=CPU))


def test_heads_of_another_network_are_refused_and_of_a_copy_accepted(heads_run, tmp_path):

    from rcnn.detection.config import DetectorConfig
    from rcnn.detection.detector import Detector
    from rcnn.errors import RcnnError
    from rcnn.modeling.checkpoint import load_model

    run = heads_run / "run"
    cfg = DetectorConfig(scorer="svm", svm=str(run / "svm"), bbox_reg=str(run / "bbox"),
                         inference=CPU)  # fmt: skip
    copy = tmp_path / "copy.pt"
    shutil.copy(run / "best.pt", copy)  # the same weights elsewhere, with another file time
    Detector(load_model(copy), cfg)
    best = torch.load(run / "best.pt", weights_only=True)
    best["model"]["features.0.bias"] += 1e-4  # same architecture and size, other weights
    torch.save(best, tmp_path / "other.pt")
    with pytest.raises(RcnnError, match="features of another model"):
        Detector(load_model(tmp_path / "other.pt"), cfg)


def test_damaged_or_foreign_files_are_one_line_errors(heads_run, prepared, tmp_path, capsys):

    run = tmp_path / "run"
    shutil.copytree(
        heads_run / "run", run, ignore=shutil.ignore_patterns("features", "*.pth", "last.pt")
    )
    feats = tmp_path / "feats"
    shutil.copytree(heads_run / "feats", feats)
    data = tmp_path / "regions"
    shutil.copytree(heads_run / "regions", data)
    image = json.loads((data / "train" / "meta.json").read_text())["images"][0]
    detect = ["detect", str(run), image, "--out", str(tmp_path / "d"), *FLAGS]
    svm = [*detect, "--scorer", "svm"]
    train_svm = ["train-svm", str(run), "--data", str(data), "--features", str(feats),
                 "--device", "cpu", "--no-progress", "--overwrite"]  # fmt: skip

    def damage(path, data: bytes):
        path.write_bytes(data)

    def keep_json_but(path, **changes):
        value = json.loads(path.read_text())
        value.update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            value.pop(key)
        path.write_text(json.dumps(value))

    def pickled_npz(folder):  # with the digest of its svm.json: the arrays are refused
        np.savez(folder / "svm.npz", weights=np.array([object()]), biases=np.zeros(1))
        keep_json_but(folder / "svm.json", npz_sha256=file_digest(folder / "svm.npz"))

    state = torch.load(run / "best.pt", weights_only=True)
    pth = tmp_path / "pth"
    pth.mkdir()
    torch.save(state["model"], pth / "model.pth")
    cases = [
        (lambda: damage(run / "svm" / "svm.json", b"{half"), svm, "svm.json: not a readable"),
        (lambda: keep_json_but(run / "svm" / "svm.json", classes=None), svm, "classes missing"),
        (lambda: damage(run / "svm" / "svm.npz", b"PK\x03\x04"), svm, "svm.npz is not the file"),
        (lambda: damage(run / "bbox" / "bbox.json", b"[]"), [*detect, "--bbox-reg",
         str(run / "bbox")], "bbox.json: not a"),
        (lambda: damage(feats / "train" / "fc7" / "000000.npy", b"\x93NUMPY junk"), train_svm,
         "000000.npy: unreadable"),
        (lambda: damage(feats / "meta.json", "{\"format\": \"\xe9\"}".encode("latin-1")),
         train_svm, "meta.json: not a readable"),
        (lambda: damage(data / "train" / "meta.json", b"\x00\x01"), train_svm,
         "meta.json: not a readable region store"),
        (lambda: damage(pth / "config.json", b"[1, 2]"), ["detect", str(pth / "model.pth"),
         image, "--classes", "car", "--out", str(tmp_path / "d"), *FLAGS], "config.json: not a"),
        (lambda: damage(pth / "config.json", b'{"input_size": 8}'), ["detect",
         str(pth / "model.pth"), image, "--classes", "car", "--out", str(tmp_path / "d"),
         *FLAGS], "config.json: a setting that rcnn cannot use"),
        (lambda: pickled_npz(run / "svm"), svm, f"{run / 'svm' / 'svm.npz'}: not a readable"),
        (lambda: torch.save({k: v for k, v in state.items() if k != "model"}, run / "best.pt"),
         detect, "best.pt is damaged: its bytes are not those rcnn wrote"),
        (lambda: (run / "checkpoints.json").unlink(), detect, "model missing"),  # unrecorded
        (lambda: damage(run / "metrics.csv", b"epoch,lr\nfirst,0.1\n"),
         ["compare", str(run), "--out", str(tmp_path / "c.png")], "not a metrics table"),
        (lambda: None, ["compare", str(heads_run / "run"), "--out", str(tmp_path / "c.gif")],
         "a figure is written as"),
    ]  # fmt: skip
    pristine = {
        path: path.read_bytes()
        for folder in (run / "svm", run / "bbox", feats, data)
        for path in folder.rglob("*")
        if path.is_file() and path.suffix != ".npy"
    }
    pristine[feats / "train" / "fc7" / "000000.npy"] = b""  # restored from the original
    for make, argv, message in cases:
        for path, content in pristine.items():  # each case damages one file of whole ones
            if path.suffix == ".npy":
                shutil.copy(heads_run / "feats" / path.relative_to(feats), path)
            else:
                path.write_bytes(content)
        make()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (message, err)
    # A figure of another format is written in that format, not as PNG bytes under its name.
    assert main(["compare", str(heads_run / "run"), "--out", str(tmp_path / "c.pdf")]) == 0
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")


def test_svms_need_the_ground_truth_positives_of_the_paper_preset(heads_run, prepared, capsys):
    argv = ["train-svm", str(heads_run / "run"), "--data", str(prepared), "--overwrite", *FLAGS]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "without their ground-truth boxes" in err and "--preset paper" in err


def test_messages_name_what_to_do(heads_run, tmp_path, capsys):

    feats = tmp_path / "feats"
    shutil.copytree(heads_run / "feats", feats)
    meta = json.loads((feats / "meta.json").read_text())
    meta["splits"]["train"]["generation"] = "0123456789abcdef"
    (feats / "meta.json").write_text(json.dumps(meta))
    argv = ["train-svm", str(heads_run / "run"), "--data", str(heads_run / "regions"),
            "--features", str(feats), "--out", str(tmp_path / "svm"), *FLAGS]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    # train-svm has no --overwrite: the message says which command has one.
    assert "rcnn features" in err and "--overwrite" in err and "--features" in err
    assert "regions, not" not in err


def feature_store_of(root, features: np.ndarray, chunk: int = 64):
    """A real feature store on disk holding ``features`` as split 'train', layer 'fc7'."""
    from rcnn.heads.feature_store import write_chunk, write_meta

    meta = {"model": {"digest": "x"}, "precision": "float32", "device": "cpu",
            "layers": {"fc7": features.shape[1]}, "chunk": chunk,
            "splits": {"train": {"regions": len(features), "generation": None}}}  # fmt: skip
    write_meta(root, meta)
    for c in range(0, len(features), chunk):
        write_chunk(root, "train", "fc7", c // chunk, features[c : c + chunk])
    return FeatureStore(root, "train", "fc7")


def hand_made_regions(classes=("car",)):
    """1 image, the first class: 10 ground-truth positives at x = +3, 200 easy negatives at
    x = -3 and 20 hard negatives at x = +1.5 (they look like positives to a first SVM that
    never saw them), all far (IoU 0) from the box; any other class has no object."""
    from rcnn.data.regions import RegionSet, RegionTruth

    rng = np.random.default_rng(0)
    pos = np.c_[3 + 0.1 * rng.normal(size=10), rng.normal(size=10)]
    easy = np.c_[-3 + 0.1 * rng.normal(size=200), rng.normal(size=200)]
    hard = np.c_[1.5 + 0.1 * rng.normal(size=20), rng.normal(size=20)]
    x = np.concatenate([pos, easy, hard]).astype(np.float16)
    n, k = len(x), len(classes)
    ious = np.zeros((n, k))
    ious[:10, 0] = 1.0
    truth = RegionTruth(np.array([[0, 0, 10, 10]]), np.array([1]), np.array([0]),
                        np.array([False]), np.where(np.arange(n) < 10, 0, -1), ious,
                        np.arange(n) < 10)  # fmt: skip
    regions = RegionSet(["a.jpg"], np.zeros(n), np.tile([0, 0, 10, 10], (n, 1)),
                        (np.arange(n) < 10).astype(int), np.zeros(n), list(classes), [(20, 20)],
                        {"labels": {"add_gt": True}, "split": "train"}, truth)  # fmt: skip
    return regions, x


def test_one_pass_of_mining_finds_the_hard_negatives(tmp_path):
    from rcnn.heads.mining import train_svms

    regions, x = hand_made_regions()
    store = feature_store_of(tmp_path, x)
    cfg = SVMConfig(C=1.0, first_negatives=5, retrain_every=10, feature_norm=1.0)
    model, log = train_svms(regions, store, cfg)
    scores = model.scores(x.astype(np.float32))[:, 0]
    assert (scores[:10] > 0).all() and (scores[10:] < 0).all()
    assert sum(row["hard_added"] for row in log) >= 20  # every hard one joined the cache
    assert log[0]["pass"] == 0 and log[-1]["pass"] == 1 and len(log) >= 3  # retrained mid-pass


def test_a_class_without_objects_is_named_and_never_detected(tmp_path, caplog):
    from rcnn.heads.bbox_regression import train_bbox
    from rcnn.heads.mining import train_svms
    from rcnn.heads.svm import SVMModel

    regions, x = hand_made_regions(("car", "bus"))
    store = feature_store_of(tmp_path, x)
    model, log = train_svms(regions, store, SVMConfig(C=1.0, feature_norm=1.0))
    assert "'bus' has no (non-difficult) ground-truth box" in caplog.text
    assert model.info["untrained"] == ["bus"] and {row["class"] for row in log} == {"car"}
    model.save(tmp_path / "svm")
    scores = SVMModel.load(tmp_path / "svm").scores(x.astype(np.float32))
    assert np.isneginf(scores[:, 1]).all() and np.isfinite(scores[:, 0]).all()
    from rcnn.detection.detector import select_detections

    dets = select_detections(np.tile([0.0, 0, 10, 10], (len(x), 1)), scores, -np.inf, 0.3)
    assert set(dets.labels.tolist()) == {1}, "a class never trained is never detected"
    regressor, _ = train_bbox(regions, store, BBoxConfig(min_iou=0.5))
    assert "'bus' has no region with IoU >= 0.5" in caplog.text
    assert not regressor.weights[1].any() and regressor.info["untrained"] == ["bus"]


@pytest.mark.parametrize("layer", ["fc7", "pool5"])
def test_streamed_heads_equal_the_stored_ones(heads_run, layer):
    from rcnn.data.regions import load_split
    from rcnn.heads.bbox_regression import train_bbox
    from rcnn.heads.config import BBoxConfig
    from rcnn.heads.mining import train_svms
    from rcnn.heads.stream import FeatureStream
    from rcnn.modeling.checkpoint import load_model

    regions = load_split(heads_run / "regions", "train")
    store = FeatureStore(heads_run / "feats", "train", layer)  # computed with --no-amp
    stream = FeatureStream(load_model(heads_run / "run"), regions, layer,
                           InferenceConfig(device="cpu", amp=False))  # fmt: skip
    rows = np.arange(0, len(regions), 7)
    np.testing.assert_allclose(stream.rows(rows), store.rows(rows), rtol=2e-3, atol=2e-3)
    if layer == "fc7":
        stored, log_a = train_svms(regions, store, SVMConfig())
        streamed, log_b = train_svms(regions, stream, SVMConfig())
        assert [r["negatives_in_cache"] for r in log_a] == [r["negatives_in_cache"] for r in log_b]
        offsets = (stored.biases, streamed.biases)
    else:
        stored, _ = train_bbox(regions, store, BBoxConfig())
        streamed, _ = train_bbox(regions, stream, BBoxConfig())
        offsets = (stored.intercepts, streamed.intercepts)
    assert stored.scale == pytest.approx(streamed.scale, rel=1e-3)
    np.testing.assert_allclose(streamed.weights, stored.weights, rtol=1e-2, atol=1e-4)
    np.testing.assert_allclose(*offsets, rtol=1e-2, atol=1e-3)
    # Only what was needed went through the network: positives, a first sample of negatives and
    # the one pass (SVMs), or the scale sample and the examples (regressors).
    assert stream.computed <= 3 * len(regions)


@pytest.fixture(scope="module")
def torchrun_heads(heads_run, prepared, tmp_path_factory):
    """Features, SVMs, box regressors, `rcnn test` and the ablation made in one process (with
    one thread, as each of torchrun's) and by a 2-process torchrun (one launch, stage after
    stage): the folder ``ROOT/{kind}{1,2}`` of each."""
    root = tmp_path_factory.mktemp("torchrun-heads")
    run, data = heads_run / "run", heads_run / "regions"
    common = ["--device", "cpu", "--no-progress", "--batch", "16", "--threads", "1"]
    heads = ["--data", str(data), "--split", "train", "--no-amp", *common]
    detect = [str(run), "--voc-root", str(prepared.parent / "voc"), "--split", "val",
              "--bbox-reg", str(root / "bbox1"), "--cache-dir", str(root / "cache"),
              "--workers", "1", *common]  # fmt: skip
    ablate = ["ablate", *detect, "--data", str(data), "--train-split", "train"]
    stages = {
        "svm": ["train-svm", str(run), *heads],
        "bbox": ["train-bbox", str(run), *heads],
        "feats": ["features", str(run), *heads, "--pool5"],
        # The images shared out by `rcnn test` and `rcnn ablate`, in both precisions.
        "ablate": [*ablate, "--no-amp"],
        "ablate-bf16": [*ablate, "--amp"],
        "test-bf16": ["test", *detect, "--amp", "--scorer", "svm", "--svm", str(root / "svm1")],
    }
    steps = []
    for kind, argv in stages.items():
        one_process(*argv, "--out", str(root / f"{kind}1"))
        steps.append({"name": kind, "argv": [*argv, "--out", str(root / f"{kind}2")]})
    ranks = torchrun_steps(steps, root / "launch")
    assert all(rank[kind]["rc"] == 0 for rank in ranks for kind in stages), ranks
    return root


def test_torchrun_features_and_heads_write_the_files_of_one_process(torchrun_heads):
    # Two processes share out the batches (each computes every other group of batches); rank 0
    # trains and writes: the same SVMs, box regressors and feature chunks, bit for bit.
    root = torchrun_heads
    for kind, names in (
        ("svm", ["svm.npz", "svm_log.csv"]),
        ("bbox", ["bbox.npz", "bbox_log.csv"]),
        ("feats", ["train/fc7/000000.npy", "train/pool5/000000.npy"]),
    ):
        one, two = root / f"{kind}1", root / f"{kind}2"
        same_files(one, two, names)
        if kind != "feats":
            a, b = (json.loads((f / f"{kind}.json").read_text()) for f in (one, two))
            assert a["classes"] == b["classes"] and a["scale"] == b["scale"]
            assert a["model"] == b["model"] and a["features"] == "computed on the fly"


@pytest.mark.parametrize("kind", ["ablate", "ablate-bf16", "test-bf16"])
def test_torchrun_test_and_ablate_write_the_files_of_one_process(torchrun_heads, kind):
    # The images are shared out: each image's regions are scored in batches of their own,
    # so its detections are the same bytes whichever process scores it, in either precision.
    one, two = torchrun_heads / f"{kind}1", torchrun_heads / f"{kind}2"
    if kind == "test-bf16":
        names = ["comp4_det_val_car.txt", "coco_results.json"]
        assert json.loads((one / "settings.json").read_text())["amp"] is True
    else:
        names = ["ablation.md", "ablation.json", "heads/initial/fc6/svm.npz",
                 "heads/fine-tuned/pool5/svm.npz"]  # fmt: skip
        rows = [
            "initial/pool5",
            "initial/fc6",
            "initial/fc7",
            "fine-tuned/pool5",
            "fine-tuned/fc6",
            "fine-tuned/fc7",
            "fine-tuned/fc7-bbox",
            "fine-tuned/softmax",
        ]
        names += [f"{row}/comp4_det_val_car.txt" for row in rows]
    same_files(one, two, names)


def test_heads_refuse_regions_of_other_classes_before_any_work(heads_run, tmp_path, capsys):
    regions = tmp_path / "regions"
    shutil.copytree(heads_run / "regions", regions)
    for split in ("train", "val"):
        meta = json.loads((regions / split / "meta.json").read_text())
        meta["classes"] = ["bus"]
        (regions / split / "meta.json").write_text(json.dumps(meta))
    run = copy_run(heads_run / "run", tmp_path / "run")
    for folder in ("svm", "bbox"):  # hard links: replaced, never written in place
        shutil.rmtree(run / folder, ignore_errors=True)
    (run / "svm").mkdir()
    (run / "svm" / "svm.npz").write_bytes(b"a good model")
    for command in ("train-svm", "train-bbox"):  # even --overwrite keeps it: refused first
        argv = [command, str(run), "--data", str(regions), "--overwrite", *FLAGS]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "regions are of classes ['bus']" in err and "trained for ['car']" in err, err
    assert (run / "svm" / "svm.npz").read_bytes() == b"a good model"
    assert not (run / "bbox" / "bbox.npz").exists()


def test_a_class_trainer_trains_on_its_positives_and_its_cache():
    from rcnn.heads.svm import ClassTrainer

    rng = np.random.default_rng(4)
    positives = np.c_[3 + 0.1 * rng.normal(size=10), rng.normal(size=10)].astype(np.float16)
    cfg = SVMConfig(C=1.0, retrain_every=3)
    trainer = ClassTrainer("car", positives, cfg, NegativePool(2, regions=100))
    hard = np.c_[0.5 + 0.1 * rng.normal(size=3), rng.normal(size=3)]
    easy = np.c_[-6 + 0.1 * rng.normal(size=5), rng.normal(size=5)]
    assert trainer.add(np.arange(3), hard) == 3 and trainer.due
    assert trainer.add(np.arange(3, 8), easy) == 5
    assert trainer.add(np.arange(3), hard) == 0, "cached once"
    row = trainer.train(scale=1.0, pass_=1)
    assert (row["positives"], row["hard_added"]) == (10, 8) and not trainer.due
    # Positives score above 0; the far negatives below -1.2 (easy) leave the cache.
    assert (positives.astype(np.float32) @ trainer.weights + trainer.bias > 0).all()
    assert row["easy_dropped"] == 5 and row["negatives_in_cache"] == 3
    row = trainer.train(scale=1.0, pass_=1)
    assert (row["hard_added"], row["easy_dropped"]) == (0, 0)
    x = np.concatenate([positives, hard.astype(np.float16)]).astype(np.float32)
    y = np.r_[np.ones(10), -np.ones(3)]
    # The trainer's SVM is the one of positives and cache: liblinear's, to its tolerance.
    w, b = fit_svm(x, y, cfg)
    assert row["objective"] == pytest.approx(svm_objective(w, b, x, y, cfg), rel=1e-3)
    assert row["objective"] == pytest.approx(svm_objective(trainer.weights, trainer.bias, x, y,
                                                           cfg), rel=1e-6)  # fmt: skip
    liblinear = ClassTrainer("car", positives, replace(cfg, solver="liblinear"),
                             NegativePool(2, regions=100))  # fmt: skip
    liblinear.add(np.arange(3), hard)
    liblinear.train(scale=1.0, pass_=1)
    np.testing.assert_array_equal(liblinear.weights, w)


@pytest.mark.parametrize("woodbury_max", [2048, 0])  # Newton steps by Woodbury, then by CG
def test_float16_rows_are_read_a_block_at_a_time_as_their_float32_copy(monkeypatch, woodbury_max):
    # Rows converts float16 parts a few rows at a time (blocks of 3 rows here, the last one
    # short, across two parts): every product is the float32 copy's, and so is the solution.
    import torch

    from rcnn.heads import solver
    from rcnn.heads.solver import Rows, solve_svms

    x, y = svm_problem(7, n=130, dim=12)
    half = torch.from_numpy(x.astype(np.float16))
    dense = half.float()
    monkeypatch.setattr(solver, "BLOCK_BYTES", 3 * 4 * 12)
    monkeypatch.setattr(solver, "WOODBURY_MAX", woodbury_max)
    rows = Rows([half[:50], half[50:]])
    w = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    r = torch.randn(130, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(rows @ w, dense @ w, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(rows.rmatmul(r), r.T @ dense, rtol=1e-6, atol=1e-4)
    index = torch.tensor([129, 0, 49, 50, 77, 49])
    assert torch.equal(rows[index], dense[index])
    assert rows.take(index).dtype == torch.float16 and torch.equal(rows.take(index), half[index])
    labels = torch.from_numpy(y).float()[:, None]
    weights = torch.where(labels > 0, 2.0, 1.0)
    blocked, _ = solve_svms(rows, labels, weights, bias=10.0)
    whole, _ = solve_svms(dense, labels, weights, bias=10.0)
    torch.testing.assert_close(blocked, whole, rtol=1e-4, atol=1e-5)


def test_classes_train_on_the_pool_in_place_as_on_their_own_examples():
    # train_classes reads the pool where it is, holes and rows of other classes included (with
    # weight 0): each class's SVM is the one solved on its own positives and negatives only.
    import torch

    from rcnn.heads.solver import solve_svms
    from rcnn.heads.svm import ClassTrainer, train_classes

    x, y = svm_problem(5, n=160, dim=12)
    pool = NegativePool(12, regions=len(x))
    cfg = SVMConfig()
    trainers = [ClassTrainer(name, x[y > 0][k::2].astype(np.float16), cfg, pool)
                for k, name in enumerate(("car", "bus"))]  # fmt: skip
    negatives = np.flatnonzero(y < 0)
    trainers[0].add(negatives[:70], x[negatives[:70]])
    trainers[1].add(negatives[35:100], x[negatives[35:100]])  # shares 35 of them
    pool.release(pool.take(negatives[100:], x[negatives[100:]]))  # a freed block of slots
    train_classes(trainers, scale=1.0, pass_=1)
    for t, kept in zip(trainers, (negatives[:70], negatives[35:100]), strict=True):
        own = np.concatenate([t.positives, x[kept].astype(np.float16)]).astype(np.float32)
        labels = torch.from_numpy(np.r_[np.ones(len(t.positives)), -np.ones(len(kept))])
        labels = labels.float()[:, None]
        weights = torch.where(labels > 0, cfg.C * cfg.pos_weight, cfg.C)
        v, _ = solve_svms(torch.from_numpy(own), labels, weights, cfg.bias)
        np.testing.assert_allclose(t.weights, v[:-1, 0].numpy(), rtol=1e-3, atol=1e-4)
        assert t.bias == pytest.approx(float(v[-1, 0]) * cfg.bias, rel=1e-3, abs=1e-4)


def test_the_features_of_rcnn_features_are_those_of_a_stream(heads_run):
    from rcnn.data.regions import load_split
    from rcnn.heads.extract import Extractor
    from rcnn.heads.stream import FeatureStream
    from rcnn.modeling.checkpoint import load_model

    regions = load_split(heads_run / "regions", "train")
    loaded = load_model(heads_run / "run")
    cpu = InferenceConfig(device="cpu", amp=False)
    extractor = Extractor(loaded, {"train": regions}, ["fc7", "pool5"], cpu)
    batches = [np.arange(0, 5), np.arange(5, 12)]
    computed = extractor.compute("train", batches)
    assert [b["fc7"].shape for b in computed] == [(5, 128), (7, 128)]
    assert computed[1]["pool5"].dtype == np.float16
    streamed = list(extractor.outputs("train", batches))  # one process: the same, in order
    for a, b in zip(computed, streamed, strict=True):
        np.testing.assert_array_equal(a["fc7"], b["fc7"])
    stream = FeatureStream(load_model(heads_run / "run"), regions, "fc7", cpu)
    np.testing.assert_allclose(computed[0]["fc7"], stream.rows(batches[0]), rtol=1e-3, atol=1e-3)


def svm_problem(seed: int, n: int = 300, dim: int = 40):
    """Features like fc7 ones (non-negative, a common direction, scaled to norm 20), about a
    tenth of them positives that a weak network separates badly."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(0.3, 1.0, (n, dim)), 0)
    y = np.where(rng.random(n) < 0.1, 1.0, -1.0)
    x[y > 0, :5] += 0.8
    x *= 20 / np.linalg.norm(x, axis=1).mean()
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_newton_solver_reaches_liblinears_objective(seed):
    from rcnn.heads.solver import solve_svm

    x, y = svm_problem(seed)
    cfg = SVMConfig()
    w, b = fit_svm(x, y, cfg)
    theirs = svm_objective(w, b, x, y, cfg)
    v, steps = solve_svm(torch.from_numpy(x), torch.from_numpy(y), cfg.C, cfg.pos_weight,
                         cfg.bias)  # fmt: skip
    ours = svm_objective(v[:-1].numpy(), float(v[-1]) * cfg.bias, x, y, cfg)
    assert ours <= theirs * (1 + 1e-3) and steps < 100
    # No nearby point does better: a minimum, not a point where the solver gave up.
    rng = np.random.default_rng(seed)
    for _ in range(50):
        dv = rng.normal(scale=1e-4, size=len(v))
        moved = v.numpy() + dv
        assert svm_objective(moved[:-1], moved[-1] * cfg.bias, x, y, cfg) >= ours - 1e-9
    # From a warm start (a solution of part of the examples) it ends at the same objective.
    part, _ = solve_svm(torch.from_numpy(x[:200]), torch.from_numpy(y[:200]), cfg.C,
                        cfg.pos_weight, cfg.bias)  # fmt: skip
    warm, warm_steps = solve_svm(torch.from_numpy(x), torch.from_numpy(y), cfg.C,
                                 cfg.pos_weight, cfg.bias, part)  # fmt: skip
    again = svm_objective(warm[:-1].numpy(), float(warm[-1]) * cfg.bias, x, y, cfg)
    assert again <= theirs * (1 + 1e-3) and warm_steps < 100


def test_the_newton_step_is_the_same_by_woodbury_and_by_conjugate_gradients(monkeypatch):
    from rcnn.heads import solver

    x, y = svm_problem(5)
    y = torch.from_numpy(y)[:, None]
    p = solver.Problem(torch.from_numpy(x), y, torch.where(y > 0, 0.002, 0.001), 10.0)
    v = torch.from_numpy(np.random.default_rng(0).normal(0, 0.01, (x.shape[1] + 1, 1))).float()
    z = 1 - p.margins(v)
    delta = float(z.abs().median()) * 2  # many examples in the quadratic zone
    one = torch.tensor([0])
    woodbury = solver.newton_steps(p, v, z, delta, one)
    monkeypatch.setattr(solver, "WOODBURY_MAX", 0)
    cg = solver.newton_steps(p, v, z, delta, one)
    np.testing.assert_allclose(cg.numpy(), woodbury.numpy(), rtol=1e-3, atol=1e-6)


def test_classes_solved_together_are_the_classes_solved_alone():
    from rcnn.heads.solver import solve_svm, solve_svms

    cfg = SVMConfig()
    problems = [svm_problem(seed, n=200 + 40 * seed) for seed in range(3)]
    x = np.concatenate([p[0] for p in problems])
    y = -np.ones((len(x), 3), np.float32)
    u = np.zeros((len(x), 3), np.float32)
    start = 0
    for k, (xk, yk) in enumerate(problems):  # each class's rows: its own block
        y[start : start + len(xk), k] = yk
        u[start : start + len(xk), k] = np.where(yk > 0, cfg.C * cfg.pos_weight, cfg.C)
        start += len(xk)
    together, _ = solve_svms(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(u),
                             cfg.bias)  # fmt: skip
    for k, (xk, yk) in enumerate(problems):
        alone, _ = solve_svm(torch.from_numpy(xk), torch.from_numpy(yk), cfg.C, cfg.pos_weight,
                             cfg.bias)  # fmt: skip
        objective = [svm_objective(v[:-1].numpy(), float(v[-1]) * cfg.bias, xk, yk, cfg)
                     for v in (together[:, k], alone)]  # fmt: skip
        w, b = fit_svm(xk, yk, cfg)
        liblinear = svm_objective(w, b, xk, yk, cfg)
        assert objective[0] <= liblinear * (1 + 1e-3) and objective[1] <= liblinear * (1 + 1e-3)
        assert objective[0] == pytest.approx(objective[1], rel=1e-3), k


def test_the_caches_stay_under_the_memory_budget_with_a_weak_network(heads_run, tmp_path, caplog):
    # A network of random weights: every negative looks hard to it, and the caches grow with
    # the pass, unless a budget bounds them.
    run = tmp_path / "random"
    shutil.copytree(heads_run / "run", run, ignore=shutil.ignore_patterns("svm", "bbox", "feat*"))
    state = torch.load(run / "best.pt", weights_only=True)
    torch.manual_seed(1)
    from rcnn.modeling.model import build_model

    state["model"] = build_model("alexnet_tiny", 2, "none").state_dict()
    save_checkpoint(run / "best.pt", state)
    common = [str(run), "--data", str(heads_run / "regions"), *FLAGS, "--first-negatives", "50",
              "--retrain-every", "40"]  # fmt: skip
    assert main(["train-svm", *common, "--out", str(tmp_path / "free")]) == 0
    free = list(csv.DictReader((tmp_path / "free" / "svm_log.csv").open()))
    grown = max(float(r["cache_mb"]) for r in free)
    budget_mb = grown / 3
    argv = ["train-svm", *common, "--out", str(tmp_path / "bounded"), "--max-cache-gb",
            str(budget_mb / 1000)]  # fmt: skip
    assert main(argv) == 0
    bounded = list(csv.DictReader((tmp_path / "bounded" / "svm_log.csv").open()))
    assert max(float(r["cache_mb"]) for r in bounded) <= budget_mb
    assert sum(int(r["budget_dropped"]) for r in bounded) > 0
    assert sum(int(r["budget_dropped"]) for r in free) == 0
    caplog.set_level(logging.WARNING)  # a budget too small for any negative: said, not hidden
    argv[argv.index("--max-cache-gb") + 1], argv[argv.index("--out") + 1] = (
        "1e-9",
        str(tmp_path / "t"),
    )
    assert main(argv) == 0
    assert "have no cached negative left and train on their positives alone" in caplog.text


def test_layers_mined_together_share_one_cache_budget(heads_run, tmp_path):
    """pool5, fc6 and fc7 mined in one pass (as `rcnn ablate` does) with a random network,
    whose caches grow: the three pools together stay under --max-cache-gb, each layer's
    share in proportion to its features' size."""
    from rcnn.data.regions import load_split
    from rcnn.heads.mining import layer_budgets, train_layer_svms
    from rcnn.heads.stream import FeatureStream
    from rcnn.modeling.checkpoint import load_model
    from rcnn.modeling.model import build_model

    run = tmp_path / "random"
    shutil.copytree(heads_run / "run", run, ignore=shutil.ignore_patterns("svm", "bbox", "feat*"))
    state = torch.load(run / "best.pt", weights_only=True)
    torch.manual_seed(1)
    state["model"] = build_model("alexnet_tiny", 2, "none").state_dict()
    save_checkpoint(run / "best.pt", state)  # as a run writes it (its digest recorded)
    regions = load_split(heads_run / "regions", "train")
    layers = ("pool5", "fc6", "fc7")

    def peaks(budget_gb: float) -> dict:
        stream = FeatureStream(load_model(run), regions, "pool5", InferenceConfig(device="cpu",
                               amp=False), layers=layers)  # fmt: skip
        cfg = SVMConfig(first_negatives=50, retrain_every=40, max_cache_gb=budget_gb)
        found = train_layer_svms(regions, stream, cfg)
        return {n: max(r["cache_mb"] for r in log) for n, (_, log) in found.items()}

    grown = peaks(8.0)
    budget_mb = sum(grown.values()) / 3
    assert max(grown.values()) > budget_mb  # a budget each layer alone would pass
    bounded = peaks(budget_mb / 1000)
    assert sum(bounded.values()) <= budget_mb
    shares = layer_budgets(1.0, {"pool5": 9216, "fc7": 4096})
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["pool5"] / shares["fc7"] == pytest.approx((9216 * 2 + 20) / (4096 * 2 + 20))


def test_svms_mine_the_background_only_images_and_refuse_an_older_paper_store(
    one_epoch_model, tmp_path, capsys
):
    """Scenes of cars and buses, SVMs for cars: the paper preset's images with buses alone
    give negatives too (svm.json counts them); a paper store without the setting (made before
    the preset kept them) is refused with what to do."""
    from rcnn.data.synth import make_synthetic_voc

    voc = tmp_path / "voc"
    make_synthetic_voc(voc, 8, seed=1, image_size=(128, 96), classes=["car", "bus"])
    flags = (voc / "ImageSets" / "Main" / "car_train.txt").read_text().split()[1::2]
    assert "-1" in flags  # some train images show no car
    assert main(["prepare", "--voc-root", str(voc), "--split", "train", "--preset", "paper",
                 "--mode", "fast", "--workers", "1", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "paper"), "--no-progress"]) == 0  # fmt: skip
    run = copy_run(one_epoch_model, tmp_path / "run")
    argv = ["train-svm", str(run), "--data", str(tmp_path / "paper"), "--split", "train", *FLAGS]
    assert main(argv) == 0
    found = json.loads((run / "svm" / "svm.json").read_text())["negatives_from"]
    assert found == {"images": 4, "background_only": flags.count("-1")}
    meta_path = tmp_path / "paper" / "train" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["info"]["labels"]["background_images"]
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main([*argv, "--overwrite"]) == 2
    assert "prepared by an earlier `--preset paper` that left out the images without a chosen " \
        "object" in capsys.readouterr().err  # fmt: skip
