"""The hard negatives that hard-negative mining keeps: one pool holds each region's features
once, however many classes keep it (for a weak network most negatives are hard for most
classes: their first 5,000 are nearly the same regions), and each class's cache is a list of
its slots, with the score each negative last got from the class's SVM.

Features are float16, as a feature store keeps them. The pool's buffers grow by a quarter
when full; a slot that no class holds any more is reused.
"""

from __future__ import annotations

import numpy as np


def half(x: np.ndarray) -> np.ndarray:
    """``x`` as float16: torch's conversion (faster than numpy's)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float16).numpy()


class NegativePool:
    """Features of the cached negatives of every class, each region's once.

    Args:
        dim: the features' size.
        regions: how many regions the split has (region indices index a table of slots).
        capacity: slots to allocate at first.
    """

    def __init__(self, dim: int, regions: int, capacity: int = 0):
        self.features = np.zeros((capacity, dim), np.float16)
        self.holders = np.zeros(capacity, np.int32)  # classes holding each slot
        self.region = np.full(capacity, -1, np.int64)  # the region in each slot
        self.slot_of = np.full(regions, -1, np.int64)  # the slot of each region, -1 if none
        self.free = np.arange(capacity - 1, -1, -1)  # free slots, the next one last

    @property
    def used(self) -> int:
        return int(np.count_nonzero(self.holders))

    @property
    def row_bytes(self) -> int:
        return self.features.shape[1] * 2 + 4 + 8 + 8  # features, holders, region, slot_of

    @property
    def nbytes(self) -> int:
        """The bytes its negatives take (its buffers, a quarter larger at most, hold them)."""
        return self.used * self.row_bytes

    def take(self, rows: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The slots of the regions ``rows`` (features ``features``) for one more class,
        storing those not pooled yet."""
        slots = self.slot_of[rows]
        new = slots < 0
        if new.any():
            count = int(new.sum())
            if count > len(self.free):
                self._grow(count - len(self.free))
            fresh, self.free = self.free[-count:][::-1], self.free[:-count]
            self.features[fresh] = half(features[new])
            self.region[fresh] = rows[new]
            self.slot_of[rows[new]] = fresh
            slots[new] = fresh
        np.add.at(self.holders, slots, 1)
        return slots

    def release(self, slots: np.ndarray) -> None:
        """One class fewer holds ``slots``; a slot no class holds is freed."""
        np.add.at(self.holders, slots, -1)
        gone = np.unique(slots[self.holders[slots] == 0])
        self.slot_of[self.region[gone]] = -1
        self.region[gone] = -1
        self.free = np.concatenate([self.free, gone[::-1]])

    def reserve(self, count: int) -> None:
        """Room for ``count`` regions in all, allocated now."""
        if count > len(self.holders):
            self._grow(count - len(self.holders))

    def _grow(self, more: int) -> None:
        old = len(self.holders)
        capacity = max(old + more, old * 5 // 4, 1024)
        features = np.zeros((capacity, self.features.shape[1]), np.float16)  # finite rows
        features[:old] = self.features
        self.features = features
        self.holders = np.concatenate([self.holders, np.zeros(capacity - old, np.int32)])
        self.region = np.concatenate([self.region, np.full(capacity - old, -1, np.int64)])
        self.free = np.concatenate([np.arange(capacity - 1, old - 1, -1), self.free])


class NegativeCache:
    """One class's hard negatives: their regions, their slots in the shared pool, and the
    score each last got from the class's SVM."""

    def __init__(self, pool: NegativePool):
        self.pool = pool
        self.rows = np.zeros(0, np.int64)
        self.slots = np.zeros(0, np.int64)
        self.scores = np.zeros(0, np.float32)
        self._largest = -1  # the largest region index ever cached: newer ones need no search

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def features(self) -> np.ndarray:
        """float16 ``[n, D]`` (a copy gathered from the pool)."""
        return self.pool.features[self.slots]

    def add(self, rows: np.ndarray, features: np.ndarray, scores=None) -> int:
        """Adds the regions not cached yet (with the scores they were mined at); returns how
        many."""
        if len(rows) and rows.min() > self._largest:  # mining goes in region order
            new = np.ones(len(rows), bool)
        else:
            new = ~np.isin(rows, self.rows)
        count = int(new.sum())
        if not count:
            return 0
        every = count == len(rows)  # no copy through a mask of all
        scores = np.zeros(len(rows), np.float32) if scores is None else np.asarray(scores)
        if not every:
            rows, features, scores = rows[new], features[new], scores[new]
        self.rows = np.concatenate([self.rows, rows])
        self.slots = np.concatenate([self.slots, self.pool.take(rows, features)])
        self.scores = np.concatenate([self.scores, scores.astype(np.float32)])
        self._largest = max(self._largest, int(rows.max()))
        return count

    def keep(self, mask: np.ndarray) -> int:
        """Keeps the cached negatives of ``mask``; returns how many went."""
        gone = len(mask) - int(mask.sum())
        if gone:
            self.pool.release(self.slots[~mask])
            self.rows, self.slots = self.rows[mask], self.slots[mask]
            self.scores = self.scores[mask]
        return gone

    def evict(self, scores: np.ndarray, easy: float) -> int:
        """Records the cached negatives' new ``scores`` and drops those below ``easy``;
        returns how many went."""
        self.scores = np.asarray(scores, np.float32)
        return self.keep(self.scores >= easy)
