"""What is fed to the model: a LightningDataModule over cached, resized images."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import AugmentationSection, SamplerSection, TrainingSection
from .preprocess import Preprocessing
from .sampler import ClassBalancedSampler, EpochShuffleSampler, evaluation_sampler
from .transforms import build_eval_transform, build_train_transform


class CachedImageDataset(Dataset):
    """Rows `indices` of an (N, S, S, 3) uint8 array (in memory or memory-mapped): (image, label[, teacher logits])."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, transform,
                 teacher_logits: np.ndarray | None = None):
        self.images = images
        self.labels = labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.teacher_logits = teacher_logits

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        row = self.indices[i]
        image = np.ascontiguousarray(self.images[row])
        sample = self.transform(image=image)["image"], int(self.labels[row])
        if self.teacher_logits is None:
            return sample
        return *sample, torch.from_numpy(np.asarray(self.teacher_logits[row], dtype=np.float32))


class LesionDataModule(L.LightningDataModule):
    """Train / val / test loaders from one image cache and one split assignment.

    `split` holds 'train', 'val' or 'test' per row (rows with anything else,
    e.g. skipped bad images, are left out).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, split: np.ndarray, preprocessing: Preprocessing, *,
                 augmentation: AugmentationSection, sampler: SamplerSection, training: TrainingSection, seed: int,
                 pin_memory: bool = False, teacher_logits: np.ndarray | None = None,
                 sources: np.ndarray | None = None):
        # Settings come in as the config's sections: their defaults live in config.py only.
        # teacher_logits: (rows, classes), one per row of `labels`, handed to the training batches (distillation)
        # sources: each row's source (None where unknown), for sampler.source_power
        super().__init__()
        self.sources = sources
        self.teacher_logits = teacher_logits
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.split = np.asarray(split)
        self.preprocessing = preprocessing
        self.augmentation = augmentation
        self.batch_size = training.batch_size
        self.eval_batch_size = training.eval_batch_size
        self.num_workers = training.num_workers
        self.balanced_sampling = sampler.balanced
        self.samples_per_class = sampler.samples_per_class
        self.balance_power = sampler.power
        self.source_power = sampler.source_power
        self.seed = seed
        self.pin_memory = pin_memory
        self._train_transform = None

    def indices(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.split == name)

    def dataset(self, name: str, train_transform: bool = False) -> CachedImageDataset:
        if train_transform:
            self._train_transform = build_train_transform(self.preprocessing, self.augmentation, seed=self.seed)
            transform = self._train_transform
        else:
            transform = build_eval_transform(self.preprocessing)
        teacher = self.teacher_logits if train_transform else None
        return CachedImageDataset(self.images, self.labels, self.indices(name), transform, teacher)

    def reseed_augmentation(self, epoch: int) -> None:
        """Epoch k draws the same augmentations whether or not the run was interrupted before it.

        Exact with num_workers=0 (the CPU recipes); worker processes keep their
        own copies of the transform, which Lightning's worker seeding covers.
        """
        if self._train_transform is not None:
            self._train_transform.set_random_seed(self.seed * 7_919 + epoch)

    def _loader(self, dataset, shuffle=False, sampler=None, batch_size=None) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size or self.eval_batch_size, shuffle=shuffle, sampler=sampler,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory, drop_last=False,
            # Its own generator: creating an iterator draws a base seed, and from the global
            # stream that draw would shift every dropout mask after it, by a different amount
            # in a resumed run (which builds its iterators in another order) than in an
            # uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train", train_transform=True)
        if self.balanced_sampling:
            sampler = ClassBalancedSampler(self.labels[dataset.indices], self.samples_per_class,
                                           seed=self.seed, power=self.balance_power,
                                           groups=None if self.sources is None else self.sources[dataset.indices],
                                           group_power=self.source_power)
            return self._loader(dataset, sampler=sampler, batch_size=self.batch_size)
        return self._loader(dataset, sampler=EpochShuffleSampler(len(dataset), seed=self.seed),
                            batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.dataset("test"))

    def _evaluation_loader(self, dataset) -> DataLoader:
        # Under DDP every image goes to exactly one rank (Lightning's default
        # sampler would pad with repeats, counted twice by the synced metrics).
        return self._loader(dataset, sampler=evaluation_sampler(dataset, self.trainer))
