"""Lesion-grouped splits on the real HAM10000 metadata."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermalens.data.readers import make_synthetic_dataset, read_dermamnist, read_ham10000, read_ham10000_metadata
from dermalens.data.split import (
    LesionLeakageError,
    assert_no_lesion_leakage,
    lesion_grouped_kfold,
    lesion_grouped_split,
    official_or_grouped_split,
    read_split_csv,
    split_for_records,
    write_split_csv,
)

TARGETS = {"train": 0.70, "val": 0.15, "test": 0.15}


@pytest.fixture(scope="module")
def metadata(shared_data: Path) -> pd.DataFrame:
    records, issues = read_ham10000_metadata(shared_data / "HAM10000_metadata.csv")
    assert len(records) == 10015 and not issues
    # A non-default index checks that results align by index, not position.
    return records.set_axis(np.arange(len(records)) * 2 + 100)


@pytest.fixture(scope="module")
def split(metadata: pd.DataFrame) -> pd.Series:
    return lesion_grouped_split(metadata, val_fraction=0.15, test_fraction=0.15, seed=0)


def test_split_is_aligned_and_complete(metadata, split):
    assert split.index.equals(metadata.index)
    assert set(split) == set(TARGETS)


def test_no_lesion_crosses_splits(metadata, split):
    assert_no_lesion_leakage(metadata, split)
    assert (metadata.assign(split=split).groupby("lesion_id")["split"].nunique() == 1).all()


def test_split_fractions_are_near_the_targets(split):
    fractions = split.value_counts(normalize=True)
    for name, target in TARGETS.items():
        assert abs(fractions[name] - target) <= 0.02, (name, fractions[name])


def test_every_split_keeps_the_class_mix(metadata, split):
    overall = metadata["label"].value_counts(normalize=True)
    for name in TARGETS:
        share = metadata.loc[split == name, "label"].value_counts(normalize=True)
        for label, expected in overall.items():
            assert abs(share.get(label, 0.0) - expected) <= 0.03, (name, label, share.get(label), expected)
        # Even the rarest class (df, 115 images) reaches every split.
        assert set(share.index) == set(overall.index)


def test_split_is_deterministic_per_seed(metadata, split):
    assert lesion_grouped_split(metadata, seed=0).equals(split)
    other = lesion_grouped_split(metadata, seed=1)
    assert (other != split).mean() > 0.1


def test_kfold_puts_each_lesion_in_exactly_one_fold(metadata):
    folds = lesion_grouped_kfold(metadata, n_folds=5, seed=0)
    assert folds.index.equals(metadata.index)
    assert sorted(folds.unique()) == [0, 1, 2, 3, 4]
    assert (metadata.assign(fold=folds).groupby("lesion_id")["fold"].nunique() == 1).all()
    assert np.allclose(folds.value_counts(normalize=True), 0.2, atol=0.02)


def test_leakage_assert_names_the_leaky_lesions(metadata, split):
    leaky = split.copy()
    multi_image = metadata["lesion_id"].value_counts()
    shared = multi_image[multi_image > 1].index[:12].tolist()
    for lesion in shared:
        rows = metadata.index[metadata["lesion_id"] == lesion]
        leaky[rows[0]] = "train"
        leaky[rows[1]] = "test"
    with pytest.raises(LesionLeakageError) as caught:
        assert_no_lesion_leakage(metadata, leaky)
    message = str(caught.value)
    assert message.startswith("12 lesion(s)") and "and 2 more" in message
    assert sum(lesion in message for lesion in shared) == 10
    assert isinstance(caught.value, AssertionError)


def test_dermamnist_uses_its_official_split(shared_data):
    dataset = read_dermamnist(shared_data)
    split = official_or_grouped_split(dataset, 0.15, 0.15, seed=0)
    assert split.tolist() == dataset.records["official_split"].tolist()


def test_grouped_split_when_no_official_split():
    dataset = make_synthetic_dataset(n_per_class=30, size=8)
    split = official_or_grouped_split(dataset, 0.2, 0.2, seed=3)
    assert_no_lesion_leakage(dataset.records, split)
    assert set(split) == {"train", "val", "test"}
    for name in ("val", "test"):  # stratified: every class in every split
        assert dataset.records.loc[split == name, "label"].nunique() == 7


@pytest.mark.filterwarnings("ignore:The least populated class")  # the sample holds a single bcc
def test_split_csv_round_trip(tmp_path, mini_ham10000):
    dataset = read_ham10000(mini_ham10000)
    split = lesion_grouped_split(dataset.records, 0.2, 0.2, seed=0)
    path = write_split_csv(dataset.records, split, tmp_path / "splits" / "split.csv")
    table = pd.read_csv(path)
    assert table.columns.tolist() == ["image_id", "lesion_id", "label", "split"]
    saved = read_split_csv(path)
    assert saved.index.name == "image_id"
    shuffled = dataset.records.sample(frac=1.0, random_state=0)
    assert split_for_records(shuffled, saved).tolist() == split.loc[shuffled.index].tolist()
    with pytest.raises(ValueError, match="not in the saved split"):
        split_for_records(dataset.records, saved.iloc[:-1])


def test_read_split_csv_rejects_bad_files(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("image_id,lesion_id,label,split\nISIC_1,L1,5,training\n")
    with pytest.raises(ValueError, match="training"):
        read_split_csv(path)
    path.write_text("image_id,lesion_id,label,split\nISIC_1,L1,5,train\nISIC_1,L1,5,test\n")
    with pytest.raises(ValueError, match="twice: ISIC_1"):
        read_split_csv(path)


@pytest.mark.parametrize("val, test", [(-0.1, 0.15), (0.15, 1.0), (0.5, 0.5)])
def test_bad_fractions_are_rejected(val, test):
    records = make_synthetic_dataset(n_per_class=6, size=8).records
    with pytest.raises(ValueError, match="fraction"):
        lesion_grouped_split(records, val, test)
