"""Class balancing without leakage: resample the training split on the fly.

The original work built a balanced set of 3,500 images per class *before*
splitting, so augmented copies of one image landed in train and test. Here
the split comes first and only the training stream is balanced.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from .readers.base import source_names


class ClassBalancedSampler(Sampler[int]):
    """Each epoch draws `samples_per_class` indices from every class.

    Minority classes are drawn with replacement (oversampled, augmentation
    makes the copies differ); majority classes without replacement when they
    have enough images. torch's WeightedRandomSampler gives balance only in
    expectation and always with replacement; a fixed count per class makes
    epochs comparable and matches the original's "N per class" design.
    The stream differs per epoch (seed + epoch), and is reproducible.

    `groups` (one per label, e.g. the image's source; None for unknown, which
    counts as one group) with `group_power` below 1 splits each class's draws
    over its groups in proportion to size**group_power (0: every group of the
    class equally). HAM10000's sources hold very different class mixes
    (vidir_molemax is 94% nevi, rosendahl holds nearly every akiec), so a
    device's look can stand in for the class; evening the sources within each
    class takes that cue away. Group balancing within a class, not across
    classes: the class draws stay as `power` sets them.
    """

    def __init__(self, labels: Sequence[int], samples_per_class: int, num_classes: int | None = None,
                 seed: int = 0, power: float = 0.0, groups: Sequence | None = None, group_power: float = 1.0):
        labels_np = np.asarray(labels, dtype=np.int64)
        if samples_per_class <= 0:
            raise ValueError(f"samples_per_class must be positive, got {samples_per_class}")
        num_classes = num_classes or int(labels_np.max()) + 1
        self.indices_by_class = [np.flatnonzero(labels_np == c) for c in range(num_classes)]
        self.present = [idx for idx in self.indices_by_class if len(idx) > 0]
        if not self.present:
            raise ValueError("ClassBalancedSampler got no labels")
        self.samples_per_class = int(samples_per_class)
        # power 0: exactly N per class (the original design). 0 < power < 1
        # draws in proportion to n_c**power (0.5 = "square-root sampling"), a
        # compromise that keeps some of the true prior for overall accuracy.
        # The epoch length stays N x classes either way.
        sizes = np.array([len(idx) for idx in self.present], dtype=np.float64) ** float(power)
        total = self.samples_per_class * len(self.present)
        self.draws_per_class = np.maximum(1, np.round(total * sizes / sizes.sum())).astype(int)
        if groups is not None and len(groups) != len(labels_np):
            raise ValueError(f"{len(groups)} groups for {len(labels_np)} labels")
        # group_power 1 leaves the class's images drawn as one pool (the draws, and so any run, exactly as
        # without groups); below 1 each class is a list of (images of one group, draws).
        self.group_draws = None
        if groups is not None and group_power != 1:
            keys = np.array(["" if name is None else name for name in source_names(groups)], dtype=object)
            self.group_draws = [self._split_over_groups(idx, keys[idx], n, float(group_power))
                                for idx, n in zip(self.present, self.draws_per_class)]
        self.seed = seed
        self.epoch = 0

    @staticmethod
    def _split_over_groups(indices: np.ndarray, keys: np.ndarray, draws: int,
                           power: float) -> list[tuple[np.ndarray, int]]:
        names = sorted(set(keys))
        if len(names) > draws:
            raise ValueError(f"a class has {len(names)} sources and {draws} draws an epoch: evening its sources "
                             "(sampler.source_power below 1) needs fewer sources per class than draws; a source is "
                             "a clinic or device, not one per image or patient")
        members = [indices[keys == name] for name in names]
        weights = np.array([len(m) for m in members], dtype=np.float64) ** power
        # One draw each, the rest split by largest remainder: the class keeps exactly the draws `power` gave it.
        exact = (draws - len(names)) * weights / weights.sum()
        shares = np.floor(exact).astype(int)
        shares[np.argsort(shares - exact, kind="stable")[:draws - len(names) - shares.sum()]] += 1
        return list(zip(members, (shares + 1).tolist()))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.group_draws is not None:
            return sum(n for pairs in self.group_draws for _, n in pairs)
        return int(self.draws_per_class.sum())

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1  # a new stream next epoch even if nobody calls set_epoch
        pools = (zip(self.present, self.draws_per_class) if self.group_draws is None
                 else (pair for pairs in self.group_draws for pair in pairs))
        drawn = [rng.choice(idx, n, replace=len(idx) < n) for idx, n in pools]
        order = np.concatenate(drawn)
        rng.shuffle(order)
        return iter(torch.as_tensor(order).tolist())


class EpochShuffleSampler(Sampler[int]):
    """Every index once per epoch, in an order drawn from (seed, epoch): the natural class mix.

    Where `shuffle=True` with a seeded generator would do, but that generator is seeded once per DataLoader,
    and a resumed run builds a new loader: its first epoch would repeat epoch 0's order, and the run would not
    end where the uninterrupted one does.
    """

    def __init__(self, size: int, seed: int = 0):
        self.size = int(size)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        self.epoch += 1  # a new order next epoch even if nobody calls set_epoch
        return iter(order.tolist())


# Evaluation under DDP: Lightning's default DistributedSampler pads the
# validation set with repeats, which synced metrics would count twice.
class UnpaddedDistributedSampler(DistributedSampler):
    """Rank r of W gets rows r, r+W, r+2W, ...: every row exactly once over all ranks.

    Ranks may get one row more than others, which is fine for evaluation
    (no gradient sync) but not for training. It subclasses
    DistributedSampler so that Lightning leaves it in place.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.total_size = len(dataset)
        self.num_samples = len(range(rank, self.total_size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def evaluation_sampler(dataset: Dataset, trainer) -> UnpaddedDistributedSampler | None:
    """The sampler for a validation/test loader: un-padded shards under DDP, None (sequential) otherwise."""
    world_size = getattr(trainer, "world_size", 1) if trainer is not None else 1
    if world_size <= 1:
        return None
    return UnpaddedDistributedSampler(dataset, num_replicas=world_size, rank=trainer.global_rank)
