import numpy as np
import pytest

from rcnn.data.sampler import BalancedBatchSampler


def make_labels(num_pos=100, num_neg=700, seed=0):
    labels = np.array([1] * (num_pos // 2) + [2] * (num_pos - num_pos // 2) + [0] * num_neg)
    return np.random.default_rng(seed).permutation(labels)


def test_exact_counts_in_every_batch():
    labels = make_labels()
    sampler = BalancedBatchSampler(labels, num_pos=32, num_neg=96, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 800 // 128
    for batch in batches:
        assert len(batch) == 128
        assert np.count_nonzero(labels[batch] > 0) == 32
        assert np.count_nonzero(labels[batch] == 0) == 96


def test_batches_per_epoch_follows_the_recipe():
    labels = make_labels(num_pos=10, num_neg=1000)
    assert len(BalancedBatchSampler(labels, 4, 12)) == 1010 // 16
    assert len(BalancedBatchSampler(labels, 32, 96)) == 1010 // 128


def test_no_repeats_while_a_class_lasts():
    labels = make_labels(num_pos=100, num_neg=700)
    # 12 batches: 192 positives (wraps around), 576 negatives; draw order kept for the check.
    sampler = BalancedBatchSampler(labels, 16, 48, shuffle_batch=False)
    batches = np.array(list(sampler))
    negs = [i for b in batches for i in b if labels[i] == 0]
    assert len(negs) == len(set(negs)) == 576
    pos = [i for b in batches for i in b if labels[i] > 0]
    assert len(set(pos[:100])) == 100  # the first pass over positives has no repeats
    assert len(set(pos)) == 100  # all positives used, then reshuffled


def test_same_seed_same_batches_and_set_epoch_changes_them():
    labels = make_labels()
    a, b = BalancedBatchSampler(labels, seed=3), BalancedBatchSampler(labels, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert second != first
    b.set_epoch(1)
    assert list(b) == second
    assert list(BalancedBatchSampler(labels, seed=4)) != first


def test_empty_class_is_a_clear_error():
    with pytest.raises(ValueError, match="0 object and 50 background regions"):
        BalancedBatchSampler(np.zeros(50, dtype=int))
    with pytest.raises(ValueError, match="10 object and 0 background"):
        BalancedBatchSampler(np.ones(10, dtype=int), 2, 2)
    with pytest.raises(ValueError, match="--num-pos"):
        BalancedBatchSampler(make_labels(), num_pos=0)


def test_shards_are_disjoint_and_equal_in_length():
    labels = make_labels(num_pos=300, num_neg=900)
    shards = [
        list(BalancedBatchSampler(labels, 8, 24, seed=1, num_replicas=3, rank=r)) for r in range(3)
    ]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == 1200 // 32 // 3
    seen = [set(i for batch in shard for i in batch) for shard in shards]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    single = BalancedBatchSampler(labels, 8, 24, seed=1)
    assert [b for s in zip(*shards, strict=True) for b in s] == list(single)[: 3 * len(shards[0])]
