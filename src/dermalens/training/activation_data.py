"""The data of trunk-cached training: samples are (activations of one view, label), not images.

With teacher logits (distillation) a training sample is (activations, label, the image's teacher logits):
the same teacher target for every view of an image.

`ActivationDataModule` is `LesionDataModule`'s counterpart for
`training/frozen_trunk.py`: the same sampling settings (class-balanced with
the sampler's power, or shuffled), a view drawn per sample from the cached
ones (`ViewSampler`, seeded by epoch), and validation on the identity view,
as `LesionDataModule` validates on the images themselves. The epoch's
validation draws the curves (and, with a monitor, picks best.ckpt); the
test-time augmentation a run is scored with comes after training
(out-of-fold logits, evaluation). Validating on the four flip views cost
as much as the epoch's training: 55 of 130 s an epoch in the CPU recipe.
"""
from __future__ import annotations

from typing import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..config import SamplerSection, TrainingSection
from ..data.sampler import ClassBalancedSampler, EpochShuffleSampler, evaluation_sampler
from .frozen_trunk import IDENTITY_VIEW, TrunkActivations


class ViewSampler(Sampler[int]):
    """Draws rows as `rows_sampler` does and a random view for each draw: yields position * views + view."""

    def __init__(self, rows_sampler: Sampler[int], views: int, seed: int):
        self.rows_sampler = rows_sampler
        self.views = views
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.rows_sampler, "set_epoch"):
            self.rows_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.rows_sampler)

    def __iter__(self) -> Iterator[int]:
        positions = list(iter(self.rows_sampler))
        rng = np.random.default_rng([self.seed, 104_729, self.epoch])
        self.epoch += 1
        chosen = rng.integers(0, self.views, size=len(positions))
        return iter((np.asarray(positions, dtype=np.int64) * self.views + chosen).tolist())


class ActivationViews(Dataset):
    """Index position * views + view -> (that view's activations as float32, label[, the row's teacher logits])."""

    def __init__(self, activations: TrunkActivations, rows: np.ndarray, labels: np.ndarray,
                 teacher_logits: np.ndarray | None = None):
        self.activations = activations
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = labels
        self.teacher_logits = teacher_logits
        self.views = activations.spec.views

    def __len__(self) -> int:
        return len(self.rows) * self.views

    def __getitem__(self, index: int):
        position, view = divmod(int(index), self.views)
        row = self.rows[position]
        sample = torch.from_numpy(np.asarray(self.activations.array[row, view], dtype=np.float32)), int(self.labels[row])
        if self.teacher_logits is None:
            return sample
        return *sample, torch.from_numpy(np.asarray(self.teacher_logits[row], dtype=np.float32))


class ActivationDataModule(L.LightningDataModule):
    """Train / val loaders over trunk activations, with the same sampling settings as `LesionDataModule`."""

    def __init__(self, activations: TrunkActivations, labels: np.ndarray, split: np.ndarray, *,
                 sampler: SamplerSection, training: TrainingSection, seed: int,
                 teacher_logits: np.ndarray | None = None, sources: np.ndarray | None = None):
        # teacher_logits: (rows, classes), one per row of `labels`, handed to the training batches (distillation)
        # sources: each row's source (None where unknown), for sampler.source_power
        super().__init__()
        self.sources = sources
        self.activations = activations
        self.labels = np.asarray(labels, dtype=np.int64)
        self.teacher_logits = teacher_logits
        self.split = np.asarray(split)
        self.sampler_settings = sampler
        self.training_settings = training
        self.seed = seed
        train_rows, val_rows = self.rows("train"), self.rows("val")
        activations.ensure(train_rows, range(activations.spec.views))
        activations.ensure(val_rows, [IDENTITY_VIEW])

    def rows(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.split == name)

    def reseed_augmentation(self, epoch: int) -> None:
        """The view drawn for each sample is a function of (seed, epoch), as augmentation is in `LesionDataModule`."""
        self._epoch = epoch

    def train_dataloader(self) -> DataLoader:
        rows = self.rows("train")
        settings = self.sampler_settings
        if settings.balanced:
            row_sampler = ClassBalancedSampler(self.labels[rows], settings.samples_per_class, seed=self.seed,
                                               power=settings.power,
                                               groups=None if self.sources is None else self.sources[rows],
                                               group_power=settings.source_power)
        else:
            row_sampler = EpochShuffleSampler(len(rows), self.seed)
        row_sampler.set_epoch(getattr(self, "_epoch", 0))
        sampler = ViewSampler(row_sampler, self.activations.spec.views, self.seed)
        sampler.set_epoch(getattr(self, "_epoch", 0))
        return DataLoader(ActivationViews(self.activations, rows, self.labels, self.teacher_logits), sampler=sampler,
                          batch_size=self.training_settings.batch_size, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        # The identity view of each row: index position * views + IDENTITY_VIEW of the training dataset.
        views = ActivationViews(self.activations, self.rows("val"), self.labels)
        identity = Subset(views, range(IDENTITY_VIEW, len(views), views.views))
        # Under DDP each image once (Lightning's own sampler would pad the shards with repeats).
        return DataLoader(identity, sampler=evaluation_sampler(identity, self.trainer),
                          batch_size=self.training_settings.eval_batch_size, num_workers=0)
