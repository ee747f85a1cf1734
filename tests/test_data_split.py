"""Lesion-grouped splits on the real HAM10000 metadata."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from dermalens.classes import CLASS_CODES
from dermalens.config import ConfigError, load_config
from dermalens.data.readers import make_synthetic_dataset, read_dermamnist, read_ham10000, read_ham10000_metadata
from dermalens.data.split import (
    InsufficientDataError,
    LesionLeakageError,
    SmallClassWarning,
    assert_no_lesion_leakage,
    lesion_grouped_kfold,
    lesion_grouped_split,
    min_lesions_per_class,
    official_or_grouped_split,
    read_split_csv,
    split_for_records,
    write_split_csv,
)
from dermalens.training.cross_validation import assign_folds, fold_split, train_folds

pytestmark = pytest.mark.unit
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


@pytest.mark.parametrize("monitored", [False, True])
def test_a_fold_model_chooses_nothing_on_the_images_it_predicts_out_of_fold(metadata, split, monitored):
    """With training.monitor set each fold model picks its best epoch (and stops early) on its validation
    split; that split was its own held-out fold, whose out-of-fold predictions then read high."""
    prepared = SimpleNamespace(split=split.to_numpy(), dataset=SimpleNamespace(records=metadata), classes=CLASS_CODES)
    assignment = assign_folds(prepared, 3, seed=0)
    pool = assignment >= 0
    for fold in range(3):
        fold_splits = fold_split(prepared, assignment, fold, 0.15 if monitored else None, seed=0)
        held_out = assignment == fold
        assert (fold_splits[split.to_numpy() == "test"] == "test").all()
        if not monitored:   # the held-out fold is only watched
            assert (fold_splits[held_out] == "val").all() and (fold_splits[pool & ~held_out] == "train").all()
            continue
        assert (fold_splits[held_out] == "test").all()        # never trained on, nor chosen on
        val = fold_splits == "val"
        assert not (val & ~pool).any() and not (val & held_out).any()
        assert 0.12 < val.sum() / (pool & ~held_out).sum() < 0.18
        assert set(metadata["label"][val]) == set(metadata["label"][pool])
        by_lesion = pd.Series(fold_splits, index=metadata.index).groupby(metadata["lesion_id"]).nunique()
        assert (by_lesion == 1).all()                          # lesion-grouped


def test_cross_validation_hands_each_fold_model_the_split_that_keeps_its_fold_unseen(tmp_path, monkeypatch,
                                                                                      caplog):
    """The wiring: train_folds gives a fold model with training.monitor the inner split, and a resumed fold the
    validation images it recorded."""
    import dermalens.training.cross_validation as cross_validation

    handed = []

    class Stop(Exception):
        pass

    def first_fold_only(config, run_dir, *, prepared, resume, **_):
        handed.append((prepared.split.copy(), resume))
        raise Stop

    monkeypatch.setattr(cross_validation, "train", first_fold_only)
    config = load_config(None, ["data.format=synthetic", "data.synthetic_per_class=30", "training.folds=3",
                                "training.monitor=val/balanced_accuracy", "model.backbone=tf_efficientnet_lite0",
                                "model.image_size=32", "model.pretrained=none", "training.freeze_stages=0",
                                "data.cache_dir=null", "training.progress_bar=false"])
    run = tmp_path / "run"
    with pytest.raises(Stop):
        train_folds(config, run, progress=False)
    (split, _), = handed
    folds = pd.read_csv(run / "split.csv")["fold"].to_numpy()
    pool = folds > 0
    assert (split[folds == 1] == "test").all()                        # its own fold: unseen
    assert (split[(folds > 1) & pool] != "test").all() and (split == "val").sum() > 0
    # A resumed fold keeps the validation images of its first start (here: a different, recorded choice).
    image_ids = pd.read_csv(run / "split.csv")["image_id"].to_numpy()
    recorded = image_ids[(folds == 2)][:5]
    (run / "fold-1").mkdir(exist_ok=True)
    pd.DataFrame({"image_id": recorded, "split": "val"}).to_csv(run / "fold-1" / "split.csv", index=False)
    with pytest.raises(Stop):
        train_folds(config, run, resume=True, progress=False)
    split, resumed = handed[-1]
    assert set(image_ids[split == "val"]) == set(recorded)
    # Training folds too small to spare a validation split: the fold chooses on its own fold, and says so.
    tiny = {**config, "data": {**config["data"], "synthetic_per_class": 8}, "training": {**config["training"], "folds": 2}}
    with caplog.at_level(logging.WARNING), pytest.raises(Stop):
        train_folds(tiny, tmp_path / "tiny", progress=False)
    split, _ = handed[-1]
    folds = pd.read_csv(tmp_path / "tiny" / "split.csv")["fold"].to_numpy()
    assert (split[folds == 1] == "val").all()
    assert "it chooses on its own fold, so the out-of-fold figures read high" in caplog.text


def test_cross_validation_with_a_monitor_needs_a_validation_share(tmp_path):
    config = load_config(None, ["data.format=synthetic", "training.folds=2", "data.val_fraction=0",
                                "training.monitor=val/balanced_accuracy"])
    with pytest.raises(ConfigError, match="data.val_fraction"):
        train_folds(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


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


def test_split_csv_round_trip(tmp_path, mini_ham10000):
    dataset = read_ham10000(mini_ham10000)
    with pytest.warns(SmallClassWarning, match=r"class 'bcc' has 1 lesion \(1 image\)"):  # the sample's only bcc
        split = lesion_grouped_split(dataset.records, 0.2, 0.2, seed=0)
    path = write_split_csv(dataset.records, split, tmp_path / "splits" / "split.csv")
    table = pd.read_csv(path)
    # HAM10000 names each image's clinic and device (its `dataset` column): the split file keeps it.
    assert table.columns.tolist() == ["image_id", "lesion_id", "label", "split", "source"]
    assert table["source"].notna().all()
    saved = read_split_csv(path)
    assert saved.index.name == "image_id"
    shuffled = dataset.records.sample(frac=1.0, random_state=0)
    assert split_for_records(shuffled, saved).tolist() == split.loc[shuffled.index].tolist()
    with pytest.raises(ValueError, match="not in the saved split"):
        split_for_records(dataset.records, saved.iloc[:-1])
    # Evaluating a run whose folder gained an image: the new image joins no split, and a warning says so.
    with pytest.warns(UserWarning, match=r"1 image\(s\) are not in the run's saved split"):
        aligned = split_for_records(dataset.records, saved.iloc[:-1], missing="excluded")
    assert aligned.tolist() == [*split.iloc[:-1].tolist(), "excluded"]
    # A run whose folder lost an image: its figures cover fewer images than it was split with, and a warning
    # says how many of each split (it was left out silently).
    gone = dataset.records["image_id"].iloc[0]
    with pytest.warns(UserWarning, match=rf"1 image\(s\) of the run's saved split are no longer in the data "
                                         rf"\({saved[gone]} 1\), e.g. {gone}"):
        kept = split_for_records(dataset.records.iloc[1:], saved)
    assert kept.tolist() == split.iloc[1:].tolist()


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


def lesion_records(lesions_per_class: dict[int, int], images_per_lesion=lambda label, lesion: 1) -> pd.DataFrame:
    """Records with the given number of lesions per label (labels not listed have no images)."""
    rows = [
        {"image_id": f"img_{label}_{lesion}_{image}", "lesion_id": f"lesion_{label}_{lesion}", "label": label}
        for label, lesions in lesions_per_class.items()
        for lesion in range(lesions)
        for image in range(images_per_lesion(label, lesion))
    ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("val, test, minimum", [(0.15, 0.15, 7), (0.2, 0.2, 5), (0.3, 0.3, 3), (0.1, 0.3, 11),
                                                (0.0, 0.2, 5), (0.2, 0.0, 5), (0.0, 0.0, 1)])
def test_min_lesions_per_class(val, test, minimum):
    assert min_lesions_per_class(val, test) == minimum


def test_too_few_lesions_everywhere_names_the_classes_and_the_minimum():
    # 2-3 images per class: fewer than the 7 folds of a 0.15 test split in every class
    # (what used to end in scikit-learn's "n_splits=7 cannot be greater than ...").
    records = lesion_records({label: 2 for label in range(7)}, lambda label, lesion: 1 + (label == 3 and lesion == 0))
    with pytest.raises(InsufficientDataError) as caught:
        lesion_grouped_split(records, 0.15, 0.15, seed=0)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "class 'df' has 2 lesions (3 images)" in message
    assert "class 'akiec' has 2 lesions (2 images)" in message and "class 'vasc'" in message
    assert "val_fraction 0.15 and test_fraction 0.15 needs at least 7 lesions per class" in message
    assert "Add images" in message and "n_splits" not in message


def test_too_few_lesions_in_all_is_insufficient_data_too():
    records = lesion_records({0: 2, 1: 2})     # 4 lesions cannot fill 7 folds, whatever the images
    with pytest.raises(InsufficientDataError, match=r"4 lesions for 7 folds.*class 'akiec' has 2 lesions"):
        lesion_grouped_split(records, 0.15, 0.15)


def test_one_small_class_is_named_in_a_warning_and_the_split_is_still_made():
    records = lesion_records({**{label: 12 for label in range(7)}, 3: 2})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = lesion_grouped_split(records, 0.15, 0.15, seed=0)
    messages = [str(w.message) for w in caught]
    assert [w.category for w in caught] == [SmallClassWarning], messages   # scikit-learn's own is not repeated
    assert messages[0].startswith("class 'df' has 2 lesions (2 images); a train/val/test split with val_fraction "
                                  "0.15 and test_fraction 0.15 needs at least 7 lesions per class")
    assert "'akiec'" not in messages[0]
    assert set(split) == {"train", "val", "test"}
    assert_no_lesion_leakage(records, split)


@pytest.mark.parametrize("val, test", [(0.15, 0.15), (0.2, 0.2), (0.1, 0.3), (0.0, 0.2), (0.2, 0.0)])
def test_classes_just_at_the_minimum_reach_every_split(val, test):
    minimum = min_lesions_per_class(val, test)
    expected = {"train"} | ({"val"} if val else set()) | ({"test"} if test else set())
    for seed in range(4):
        # every class at the minimum; lesions of 1-3 images in some runs
        sizes = (lambda label, lesion: 1) if seed % 2 == 0 else (lambda label, lesion: 1 + (label + lesion) % 3)
        records = lesion_records({label: minimum for label in range(7)}, sizes)
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # no SmallClassWarning, no scikit-learn warning
            split = lesion_grouped_split(records, val, test, seed=seed)
        assert_no_lesion_leakage(records, split)
        for label in range(7):
            assert set(split[records["label"] == label]) == expected, (seed, CLASS_CODES[label])


def test_a_class_with_no_images_is_absent_not_short():
    records = lesion_records({label: 7 for label in (0, 1, 2, 4, 5)})   # no df, no vasc
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = lesion_grouped_split(records, 0.15, 0.15, seed=0)
    assert set(split) == {"train", "val", "test"}


def test_messages_use_the_given_class_codes():
    dataset = make_synthetic_dataset(n_per_class=2, size=8)    # one lesion of 2 images per class
    codes = ("a0", "b1", "c2", "d3", "e4", "f5", "g6")
    with pytest.raises(InsufficientDataError, match=r"class 'd3' has 1 lesion \(2 images\)"):
        official_or_grouped_split(dataset, 0.15, 0.15, seed=0, classes=codes)
    records = lesion_records({**{label: 12 for label in range(7)}, 2: 1, 9: 1})
    with pytest.warns(SmallClassWarning, match=r"class 'c2' has 1 lesion \(1 image\); class 'label 9' has 1 lesion"):
        lesion_grouped_split(records, 0.15, 0.15, classes=codes)
