"""Train/val/test splits that never put one lesion on both sides.

HAM10000 holds several images of many lesions (10,015 images, 7,470 lesions).
Splitting per image lets near-identical photos of one lesion sit in train and
test, which inflates test scores; every split here groups by ``lesion_id``
and stratifies by ``label`` so rare classes appear in every split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from dermalens.atomic_io import atomic_write_text
from dermalens.data.readers import OFFICIAL_SPLITS, LesionDataset

SPLIT_COLUMNS = ("image_id", "lesion_id", "label", "split")
MAX_LEAKY_LESIONS_LISTED = 10


class LesionLeakageError(AssertionError):
    """A lesion has images in more than one split."""


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _one_grouped_fold(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of one StratifiedGroupKFold fold holding about ``fraction`` of rows."""
    n_folds = max(2, round(1.0 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise ValueError(
            f"cannot hold out {fraction:.0%} by lesion: {n_groups} lesion(s) for {n_folds} folds"
        )
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    _, held_out = next(folds.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held_out] = True
    return mask


def lesion_grouped_split(
    records: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> pd.Series:
    """'train' / 'val' / 'test' per record (aligned to ``records.index``).

    Test is one fold of round(1/test_fraction) lesion-grouped, label-stratified
    folds; val is carved from the rest the same way. Fractions are therefore
    approximate (0.15 gives 1/7 ~ 0.143). Deterministic for a seed.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    labels = records["label"].to_numpy()
    groups = records["lesion_id"].astype(str).to_numpy()
    split = np.full(len(records), "train", dtype=object)

    if test_fraction > 0:
        is_test = _one_grouped_fold(labels, groups, test_fraction, seed)
        split[is_test] = "test"
    rest = np.flatnonzero(split == "train")
    if val_fraction > 0:
        # val_fraction is of the whole dataset; the rest is smaller than that.
        val_of_rest = val_fraction / (1.0 - test_fraction)
        is_val = _one_grouped_fold(labels[rest], groups[rest], val_of_rest, seed)
        split[rest[is_val]] = "val"
    return pd.Series(split, index=records.index, name="split", dtype=object)


def lesion_grouped_kfold(records: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> pd.Series:
    """Fold number 0..n_folds-1 per record; each lesion is in exactly one fold."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    labels = records["label"].to_numpy()
    groups = records["lesion_id"].astype(str).to_numpy()
    if len(np.unique(groups)) < n_folds:
        raise ValueError(f"{len(np.unique(groups))} lesion(s) cannot fill {n_folds} folds")
    fold = np.full(len(records), -1, dtype=np.int64)
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for number, (_, held_out) in enumerate(folds.split(np.zeros(len(records)), labels, groups)):
        fold[held_out] = number
    return pd.Series(fold, index=records.index, name="fold")


def assert_no_lesion_leakage(records: pd.DataFrame, split: pd.Series) -> None:
    """Raise LesionLeakageError naming lesions whose images sit in more than one split."""
    splits_per_lesion = (
        pd.DataFrame({"lesion_id": records["lesion_id"], "split": split.reindex(records.index)})
        .groupby("lesion_id")["split"]
        .nunique()
    )
    leaky = splits_per_lesion[splits_per_lesion > 1].index.tolist()
    if leaky:
        shown = ", ".join(map(str, leaky[:MAX_LEAKY_LESIONS_LISTED]))
        more = f" and {len(leaky) - MAX_LEAKY_LESIONS_LISTED} more" if len(leaky) > MAX_LEAKY_LESIONS_LISTED else ""
        raise LesionLeakageError(f"{len(leaky)} lesion(s) appear in more than one split: {shown}{more}")


def official_or_grouped_split(
    dataset: LesionDataset, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> pd.Series:
    """The source's own splits when every record has one and train/val/test all occur
    (DermaMNIST); otherwise a lesion-grouped split."""
    official = dataset.records["official_split"]
    if official.notna().all() and set(official) == set(OFFICIAL_SPLITS):
        return pd.Series(official.to_numpy(dtype=object), index=dataset.records.index, name="split")
    return lesion_grouped_split(dataset.records, val_fraction, test_fraction, seed)


def write_split_csv(records: pd.DataFrame, split: pd.Series, path: Path) -> Path:
    """Save a split as CSV (image_id,lesion_id,label,split), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = records[["image_id", "lesion_id", "label"]].assign(split=split.reindex(records.index).to_numpy())
    if table["split"].isna().any():
        raise ValueError("split does not cover every record")
    return atomic_write_text(path, table.to_csv(index=False))


def read_split_csv(path: Path) -> pd.Series:
    """A saved split as a Series indexed by image_id (use `split_for_records` to align it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    table = pd.read_csv(path, dtype={"image_id": str, "lesion_id": str, "split": str})
    missing = [c for c in SPLIT_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"split file {path} lacks column(s) {', '.join(missing)}")
    duplicated = table["image_id"][table["image_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"split file {path} lists image ids twice: {', '.join(duplicated[:10])}")
    unknown = sorted(set(table["split"]) - set(OFFICIAL_SPLITS))
    if unknown:
        raise ValueError(f"split file {path} has unknown split name(s) {unknown}; expected {OFFICIAL_SPLITS}")
    return pd.Series(table["split"].to_numpy(dtype=object), index=pd.Index(table["image_id"], name="image_id"),
                     name="split")


def split_for_records(records: pd.DataFrame, saved: pd.Series) -> pd.Series:
    """Align a split read by `read_split_csv` to ``records``; every record must be in it."""
    split = records["image_id"].map(saved)
    absent = records.loc[split.isna(), "image_id"].tolist()
    if absent:
        raise ValueError(f"{len(absent)} record(s) are not in the saved split, e.g. {', '.join(absent[:10])}")
    return split.rename("split").astype(object)
