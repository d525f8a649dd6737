import cv2
import numpy as np
import pytest
import torch

from rcnn.batches import DeviceFeeder, DeviceImages, LoaderFeeder, chunks, warp_regions
from rcnn.dataset import ImageStore, RegionDataset, mean_fill
from rcnn.regions import RegionSet
from rcnn.train import TrainConfig, make_feeder

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def val_set(prepared):
    regions = RegionSet.load(prepared / "val")
    return regions, ImageStore(regions.image_paths)


def interior_error(a: torch.Tensor, b: torch.Tensor, border: int = 2) -> float:
    """Mean absolute difference away from the outermost pixels, where the two paths differ by
    design: OpenCV clamps to the crop's edge, roi_align reads the neighbouring image pixels."""
    return (a - b)[..., border:-border, border:-border].abs().mean().item()


@pytest.mark.parametrize("pad", [0, 6])
def test_device_warp_matches_opencv_warp(val_set, pad):
    regions, store = val_set
    size = 48
    dataset = RegionDataset(regions, store, size, pad, mean_fill(MEAN))
    images = DeviceImages(store, "cpu", MEAN, STD)
    index = np.arange(0, len(regions), max(1, len(regions) // 40))
    batch = warp_regions(
        images,
        torch.from_numpy(regions.image_index[index]).long(),
        torch.from_numpy(regions.boxes[index]),
        size,
        pad,
    )
    loader = LoaderFeeder(
        [(torch.stack([dataset[int(i)][0] for i in index]), torch.zeros(1))],
        torch.device("cpu"),
        MEAN,
        STD,
    )
    ((cpu_batch, _),) = list(loader)
    assert batch.shape == cpu_batch.shape == (len(index), 3, size, size)
    # Normalized units: 0.05 is about 3 grey levels of 255.
    assert interior_error(batch, cpu_batch) < 0.05
    assert (batch - cpu_batch).abs().mean().item() < 0.15


def test_device_warp_of_a_whole_image_is_a_resize(tmp_path):
    # A smooth gradient image and the full-image box: both paths are plain bilinear resizes.
    yy, xx = np.mgrid[0:40, 0:60]
    rgb = np.stack([xx * 4, yy * 6, (xx + yy) * 2], axis=-1).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), rgb[..., ::-1])  # PNG: lossless, stored as BGR
    images = DeviceImages(ImageStore([str(tmp_path / "g.png")]), "cpu", (0, 0, 0), (1 / 255,) * 3)
    out = warp_regions(images, torch.tensor([0]), torch.tensor([[0, 0, 60, 40]]), 30)
    expected = cv2.resize(rgb, (30, 30), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), expected, atol=1.0)


def test_device_feeder_batches_and_labels(val_set):
    regions, store = val_set
    images = DeviceImages(store, "cpu", MEAN, STD)
    batches = chunks(np.arange(len(regions)), 64)
    feeder = DeviceFeeder(regions, images, batches, size=32)
    got = list(feeder)
    assert len(got) == len(feeder) == len(batches)
    labels = torch.cat([y for _, y in got])
    assert torch.equal(labels, torch.from_numpy(regions.labels.astype(np.int64)))
    assert got[0][0].dtype == torch.float32 and got[0][0].shape == (64, 3, 32, 32)
    assert images.nbytes == len(regions.image_paths) * 3 * 4 * int(np.prod(store.shapes.max(0)))


def test_make_feeder_paths_agree(val_set):
    regions, store = val_set
    batches = chunks(np.arange(len(regions))[:96], 32)
    out = {}
    for pipeline in ("device", "threads", "loader"):
        cfg = TrainConfig(input_size=40, pipeline=pipeline, workers=0)
        feeder = make_feeder(regions, batches, cfg, torch.device("cpu"), MEAN, STD, store)
        out[pipeline] = torch.cat([x for x, _ in feeder])
    assert interior_error(out["device"], out["loader"]) < 0.05
    # Same OpenCV warp in threads and in worker processes; only float rounding differs.
    torch.testing.assert_close(out["threads"], out["loader"], rtol=0, atol=1e-5)
    assert out["threads"].is_contiguous(memory_format=torch.channels_last)
