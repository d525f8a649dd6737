"""Balanced batches: every batch holds exactly ``num_pos`` object regions and ``num_neg``
background regions (the recipe's 32 + 96 = 128).

An epoch's plan is a pure function of ``(seed, epoch)``: each class is drawn without
replacement from a permutation, and re-shuffled only when it runs out. Sharding for
distributed training takes every ``num_replicas``-th batch of the same plan, so ranks see
disjoint batches and the same number of them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from rcnn.errors import ConfigError


class BalancedBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices, ``num_pos`` positives then ``num_neg`` negatives.

    Args:
        labels (array[N]): region labels; ``> 0`` is an object, ``0`` is background.
        num_pos: object regions per batch.
        num_neg: background regions per batch.
        seed: seed of the whole plan; the same seed and epoch give the same batches.
        num_replicas: number of distributed ranks sharing the plan.
        rank: this rank's shard.
        shuffle_batch: shuffle positives and negatives inside each batch.
    """

    def __init__(
        self,
        labels,
        num_pos: int = 32,
        num_neg: int = 96,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle_batch: bool = True,
    ):
        labels = np.asarray(labels)
        if num_pos <= 0 or num_neg <= 0:
            raise ConfigError(f"--num-pos and --num-neg must be > 0, got {num_pos}, {num_neg}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.positives = np.flatnonzero(labels > 0)
        self.negatives = np.flatnonzero(labels == 0)
        if len(self.positives) == 0 or len(self.negatives) == 0:
            raise ConfigError(
                f"cannot balance batches: {len(self.positives)} object and "
                f"{len(self.negatives)} background regions; both classes are needed "
                "(check the labelling thresholds of `rcnn prepare`)"
            )
        self.num_pos, self.num_neg = num_pos, num_neg
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.shuffle_batch = shuffle_batch
        self.epoch = 0
        # As in the recipe: as many batches as the regions would fill, whatever the mix.
        self.total_batches = len(labels) // (num_pos + num_neg)
        if self.total_batches < num_replicas:
            raise ConfigError(
                f"{len(labels)} regions make {self.total_batches} batches of "
                f"{num_pos + num_neg}, fewer than the {num_replicas} ranks"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.total_batches // self.num_replicas

    def _draw(self, rng: np.random.Generator, pool: np.ndarray, count: int) -> np.ndarray:
        """``count`` indices from back-to-back permutations of ``pool``."""
        rounds = -(-count // len(pool))
        return np.concatenate([rng.permutation(pool) for _ in range(rounds)])[:count]

    def plan(self) -> np.ndarray:
        """The whole epoch's batches, all ranks: int64 ``[total_batches, num_pos + num_neg]``."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n = self.total_batches
        pos = self._draw(rng, self.positives, n * self.num_pos).reshape(n, self.num_pos)
        neg = self._draw(rng, self.negatives, n * self.num_neg).reshape(n, self.num_neg)
        batches = np.concatenate([pos, neg], axis=1)
        if self.shuffle_batch:
            batches = rng.permuted(batches, axis=1)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        shard = self.plan()[self.rank : len(self) * self.num_replicas : self.num_replicas]
        for batch in shard:
            yield batch.tolist()
