import gc
import json
import os
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from rcnn.data.feeders import (
    DeviceFeeder,
    DeviceImages,
    LoaderFeeder,
    ThreadFeeder,
    Warp,
    chunks,
    make_feeder,
    warp_regions,
)
from rcnn.data.regions import RegionSet
from rcnn.data.warps import ImageStore, RegionDataset, context_box, draw_flips, mean_fill

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CPU = torch.device("cpu")


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
    padded = int(np.prod(store.shapes.max(0) + 1))  # a row and column past the largest
    assert images.nbytes == len(regions.image_paths) * 3 * 4 * padded


def test_device_warp_of_an_image_is_the_same_whatever_images_share_the_tensor(tmp_path):
    # A region at the border of the largest image reads the padding, as one of a smaller image
    # does: its warp is the same when a larger image joins the tensor.
    rng = np.random.default_rng(0)
    for name, (h, w) in (("a.png", (30, 40)), ("b.png", (50, 60))):
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    boxes = torch.tensor([[25, 15, 40, 30], [0, 0, 40, 30]])
    alone = DeviceImages(ImageStore([str(tmp_path / "a.png")]), "cpu", MEAN, STD)
    shared = DeviceImages(
        ImageStore([str(tmp_path / "a.png"), str(tmp_path / "b.png")]), "cpu", MEAN, STD
    )
    index = torch.tensor([0, 0])
    for pad in (0, 4):
        a = warp_regions(alone, index, boxes, 24, pad)
        b = warp_regions(shared, index, boxes, 24, pad)
        assert torch.equal(a, b), pad


def test_make_feeder_paths_agree(val_set):
    regions, store = val_set
    batches = chunks(np.arange(len(regions))[:96], 32)
    out = {}
    for pipeline in ("device", "threads", "loader"):
        warp = Warp(40, 0, MEAN, STD)
        feeder = make_feeder(regions, batches, warp, CPU, pipeline, workers=0, store=store)
        out[pipeline] = torch.cat([x for x, _ in feeder])
    assert interior_error(out["device"], out["loader"]) < 0.05
    assert interior_error(out["device"], out["threads"]) < 0.05
    # Threads resize normalized floats, workers uint8: they differ by the uint8 rounding.
    grey_level = 1 / (255 * min(STD))
    torch.testing.assert_close(out["threads"], out["loader"], rtol=0, atol=1.01 * grey_level)
    assert out["threads"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("pad", [0, 6])
def test_threads_on_uint8_images_match_worker_processes(val_set, monkeypatch, pad):
    # Normalized images too big for memory: the threads warp uint8 ones, as workers do.
    regions, store = val_set
    monkeypatch.setattr("rcnn.data.feeders.float_images_budget", lambda: 0)
    batches = chunks(np.arange(len(regions))[:64], 32)
    warp = Warp(40, pad, MEAN, STD)
    threads = make_feeder(regions, batches, warp, CPU, "threads", workers=0, store=store)
    assert threads.lut is not None
    loader = make_feeder(regions, batches, warp, CPU, "loader", workers=0, store=store)
    for generator in (None, 5):
        flips = [torch.Generator().manual_seed(generator) if generator else None for _ in "ab"]
        a = torch.cat([x for x, _ in threads.iterate(flips[0])])
        b = torch.cat([x for x, _ in loader.iterate(flips[1])])
        # The same uint8 warp; a float64 lookup table against float32 arithmetic.
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_thread_warp_is_opencv_resize_of_the_normalized_image(val_set):
    regions, store = val_set
    size, pad = 40, 4
    index = np.arange(0, len(regions), max(1, len(regions) // 30))
    feeder = ThreadFeeder(regions, store, [index], size, pad, torch.device("cpu"), MEAN, STD)
    ((batch, labels),) = list(feeder)
    assert torch.equal(labels, torch.from_numpy(regions.labels[index].astype(np.int64)))
    for row, i in enumerate(index):
        image = store.image(regions.image_index[i]).astype(np.float64)
        normalized = ((image / 255 - MEAN) / STD).astype(np.float32)
        # The context box in whole pixels, with zeros (the mean colour) outside the image.
        x1, y1, x2, y2 = np.round(context_box(regions.boxes[i], size, pad)).astype(int)
        canvas = np.zeros((y2 - y1, x2 - x1, 3), np.float32)
        h, w = normalized.shape[:2]
        cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        canvas[cy1 - y1 : cy2 - y1, cx1 - x1 : cx2 - x1] = normalized[cy1:cy2, cx1:cx2]
        expected = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_LINEAR)
        got = batch[row].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_every_path_flips_the_same_regions(val_set):
    regions, store = val_set
    batches = chunks(np.arange(len(regions))[:64], 16)
    for pipeline in ("threads", "device", "loader"):
        warp = Warp(32, 0, MEAN, STD)
        feeder = make_feeder(regions, batches, warp, CPU, pipeline, workers=0, store=store)
        plain = [x.clone() for x, _ in feeder]
        flipped = [x.clone() for x, _ in feeder.iterate(torch.Generator().manual_seed(3))]
        draws = torch.Generator().manual_seed(3)
        for before, after in zip(plain, flipped, strict=True):
            mask = draw_flips(len(before), draws)
            assert 0 < int(mask.sum()) < len(mask)
            torch.testing.assert_close(after[mask], before[mask].flip(-1), rtol=0, atol=0)
            torch.testing.assert_close(after[~mask], before[~mask], rtol=0, atol=0)


def test_the_feeders_of_one_store_share_its_normalized_images(val_set):
    """Feeders of one store alive at once (the SVM stage's positives and negatives) hold one
    float32 copy of its images, not one each; it goes with the last of them."""
    regions, _ = val_set
    store = ImageStore(regions.image_paths)
    index = [np.arange(0, len(regions), 7)]
    first, second = (ThreadFeeder(regions, store, index, 24, 0, CPU, MEAN, STD) for _ in "ab")
    assert np.shares_memory(first.views[0], second.views[0])
    assert torch.equal(next(iter(first))[0], next(iter(second))[0])
    other = ThreadFeeder(regions, store, index, 24, 0, CPU, (0.5,) * 3, (0.5,) * 3)
    assert not np.shares_memory(other.views[0], first.views[0])
    assert len(store.normalized) == 2
    del first, second
    gc.collect()
    assert list(store.normalized) == [((0.5,) * 3, (0.5,) * 3)]
    assert len(pickle.loads(pickle.dumps(store)).normalized) == 0


def test_thread_feeder_recycles_only_buffers_nobody_holds(val_set):
    regions, store = val_set
    batches = chunks(np.arange(len(regions))[:150], 16)  # 9 batches of 16, then one of 6
    feeder = ThreadFeeder(regions, store, batches, 24, 0, torch.device("cpu"), MEAN, STD, 2)
    kept = list(feeder)  # the caller holds every batch: none may be overwritten
    assert len({x.data_ptr() for x, _ in kept}) == len(batches)
    consumed = []
    for x, _ in feeder:  # a training loop: each batch dropped before the next is asked for
        consumed.append((x.data_ptr(), x.clone()))
    # Three buffers go round; the short last batch needs one more.
    assert len({ptr for ptr, _ in consumed}) <= ThreadFeeder.pool_size + 1
    for (x, _), (_, copy) in zip(kept, consumed, strict=True):
        assert torch.equal(x, copy)


FAULTS_PROBE = """
import json, resource, torch
from rcnn.runtime.allocator import reuse_freed_memory

def faults_of_fresh_blocks():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(6):
        block = torch.empty(2**24)  # 64 MiB, far above glibc's mmap threshold
        block.fill_(1.0)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = faults_of_fresh_blocks()
with reuse_freed_memory() as applied:
    for _ in range(3):  # the heap grows to hold the block over the first few
        faults_of_fresh_blocks()
    kept = faults_of_fresh_blocks()
print(json.dumps({"plain": plain, "kept": kept, "applied": applied}))
"""


def test_reuse_freed_memory_avoids_page_faults():
    # A fresh process: the heap's state must not depend on what ran before.
    run = subprocess.run([sys.executable, "-c", FAULTS_PROBE], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    faults = json.loads(run.stdout)
    if not faults["applied"]:
        pytest.skip("not glibc")
    # Each fresh 64 MiB block is faulted in again: 16,384 faults, or 32 with huge pages.
    assert faults["plain"] >= 6 * 32
    assert faults["kept"] < faults["plain"] / 3  # the heap's memory is reused as it is


def test_keeping_freed_memory_can_be_turned_off():
    env = {**os.environ, "RCNN_KEEP_FREED_MEMORY": "0"}
    run = subprocess.run(
        [sys.executable, "-c", FAULTS_PROBE], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    faults = json.loads(run.stdout)
    assert not faults["applied"] and faults["kept"] > faults["plain"] / 2
