"""Train/val/test splits that never put one lesion on both sides.

HAM10000 holds several images of many lesions (10,015 images, 7,470 lesions).
Splitting per image lets near-identical photos of one lesion sit in train and
test, which inflates test scores; every split here groups by ``lesion_id``
and stratifies by ``label`` so rare classes appear in every split.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from dermalens.atomic_io import atomic_write_text
from dermalens.classes import CLASS_CODES
from dermalens.data.readers import OFFICIAL_SPLITS, LesionDataset

SPLIT_COLUMNS = ("image_id", "lesion_id", "label", "split")
MAX_LEAKY_LESIONS_LISTED = 10


class LesionLeakageError(AssertionError):
    """A lesion has images in more than one split."""


class InsufficientDataError(ValueError):
    """Too few lesions (in the classes, or in all) for the requested lesion-grouped split."""


class SmallClassWarning(UserWarning):
    """A class has too few lesions for the split to put it in train, val and test."""


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")


def _n_folds(fraction: float) -> int:
    """How many StratifiedGroupKFold folds hold out about ``fraction`` (one of them)."""
    return max(2, round(1.0 / fraction))


def _fold_counts(val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(test folds, val folds), 0 for a split left out; val is drawn from what test leaves."""
    n_test = _n_folds(test_fraction) if test_fraction > 0 else 0
    n_val = _n_folds(val_fraction / (1.0 - test_fraction)) if val_fraction > 0 else 0
    return n_test, n_val


def min_lesions_per_class(val_fraction: float = 0.15, test_fraction: float = 0.15) -> int:
    """Fewest lesions a class needs for `lesion_grouped_split` to put it in every split.

    Test is one of n_test = round(1/test_fraction) folds, val one of
    n_val = round((1 - test_fraction)/val_fraction) folds of what test leaves
    (at least 2 each). StratifiedGroupKFold gives each lesion of a class to a
    fold holding the fewest images of that class, so k >= n_test lesions reach
    every fold, the held-out one taking ceil(k/n_test) of them when lesions are
    about equal in size; the n_val val folds need one each of what is left.
    0.15/0.15 needs 7, 0.2/0.2 needs 5; lesions of very unequal image counts
    can need more.
    """
    _check_fractions(val_fraction, test_fraction)
    n_test, n_val = _fold_counts(val_fraction, test_fraction)
    if n_test == 0:
        return max(1, n_val)
    lesions = n_test
    while lesions - math.ceil(lesions / n_test) < n_val:
        lesions += 1
    return lesions


def class_sizes(records: pd.DataFrame, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Images and distinct lesions of each class present in ``records``, indexed by class code
    (label order; a label outside ``classes`` is called 'label N')."""
    classes = CLASS_CODES if classes is None else tuple(classes)
    table = (
        pd.DataFrame({"label": records["label"].to_numpy(dtype=np.int64),
                      "lesion_id": records["lesion_id"].astype(str).to_numpy()})
        .groupby("label")
        .agg(images=("lesion_id", "size"), lesions=("lesion_id", "nunique"))
        .sort_index()
    )
    table.index = pd.Index([str(classes[label]) if 0 <= label < len(classes) else f"label {label}"
                            for label in table.index.tolist()], name="class")
    return table


def _count(number: int, word: str) -> str:
    return f"{number} {word}{'' if number == 1 else 's'}"


def _describe(sizes: pd.DataFrame, val_fraction: float, test_fraction: float, minimum: int) -> str:
    """E.g. class 'df' has 2 lesions (2 images); a train/val/test split with ... needs at least N lesions per class."""
    parts = [f"class {code!r} has {_count(int(row.lesions), 'lesion')} ({_count(int(row.images), 'image')})"
             for code, row in sizes.iterrows()]
    kind = "/".join(["train"] + ["val"] * (val_fraction > 0) + ["test"] * (test_fraction > 0))
    return (f"{'; '.join(parts)}; a {kind} split with val_fraction {val_fraction:g} and test_fraction "
            f"{test_fraction:g} needs at least {minimum} lesions per class")


def _remedy(minimum: int, n_classes: int) -> str:
    remedy = f"Add images of more lesions of {'that class' if n_classes == 1 else 'those classes'}"
    easier = min_lesions_per_class(0.3, 0.3)
    if minimum > easier:
        remedy += (f", or use larger fractions, which need fewer lesions (val_fraction 0.3 and "
                   f"test_fraction 0.3 need {easier})")
    return remedy + "."


def small_classes(records: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15,
                  classes: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of `class_sizes` with fewer lesions than `min_lesions_per_class`.

    A class with no images at all is not listed: it is absent, not short.
    """
    sizes = class_sizes(records, classes)
    return sizes[sizes["lesions"] < min_lesions_per_class(val_fraction, test_fraction)]


def _one_grouped_fold(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int,
                      explain: Callable[[], str] | None = None, quiet: bool = False) -> np.ndarray:
    """Boolean mask of one StratifiedGroupKFold fold holding about ``fraction`` of rows.

    Where scikit-learn would refuse (fewer lesions than folds, or every class
    with fewer images than folds) InsufficientDataError is raised instead, with
    ``explain()`` saying why in terms of the whole data. ``quiet`` silences
    scikit-learn's 'least populated class' warning when a SmallClassWarning says it better.
    """
    n_folds = _n_folds(fraction)
    n_groups = len(np.unique(groups))
    _, images_per_class = np.unique(labels, return_counts=True)
    if n_groups < n_folds or np.all(images_per_class < n_folds):
        reason = (f"{_count(n_groups, 'lesion')} for {n_folds} folds" if n_groups < n_folds
                  else f"every class has fewer than {n_folds} images for {n_folds} folds")
        detail = explain() if explain is not None else ""
        raise InsufficientDataError(f"cannot hold out {fraction:.0%} by lesion ({reason})"
                                    + (f": {detail}" if detail else ""))
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        if quiet:
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        _, held_out = next(folds.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held_out] = True
    return mask


def lesion_grouped_split(
    records: pd.DataFrame,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    *,
    classes: Sequence[str] | None = None,
) -> pd.Series:
    """'train' / 'val' / 'test' per record (aligned to ``records.index``).

    Test is one fold of round(1/test_fraction) lesion-grouped, label-stratified
    folds; val is carved from the rest the same way. Fractions are therefore
    approximate (0.15 gives 1/7 ~ 0.143). Deterministic for a seed.

    A class with fewer lesions than `min_lesions_per_class` may miss val or
    test: that is a SmallClassWarning naming it. When the split cannot be made
    at all, InsufficientDataError names the short classes, their images and
    lesions, and the minimum. ``classes`` names the labels in those messages
    (None: HAM10000's `CLASS_CODES`).
    """
    _check_fractions(val_fraction, test_fraction)
    labels = records["label"].to_numpy()
    groups = records["lesion_id"].astype(str).to_numpy()
    split = np.full(len(records), "train", dtype=object)
    minimum = min_lesions_per_class(val_fraction, test_fraction)
    short = small_classes(records, val_fraction, test_fraction, classes)

    def explain() -> str:
        listed = short if not short.empty else class_sizes(records, classes)
        if listed.empty:
            return "there are no records to split"
        return f"{_describe(listed, val_fraction, test_fraction, minimum)}. {_remedy(minimum, len(listed))}"

    if test_fraction > 0:
        is_test = _one_grouped_fold(labels, groups, test_fraction, seed, explain, quiet=not short.empty)
        split[is_test] = "test"
    rest = np.flatnonzero(split == "train")
    if val_fraction > 0:
        # val_fraction is of the whole dataset; the rest is smaller than that.
        val_of_rest = val_fraction / (1.0 - test_fraction)
        is_val = _one_grouped_fold(labels[rest], groups[rest], val_of_rest, seed, explain, quiet=not short.empty)
        split[rest[is_val]] = "val"
    if not short.empty:
        which = "that class" if len(short) == 1 else "those classes"
        warnings.warn(f"{_describe(short, val_fraction, test_fraction, minimum)}, so {which} may be missing "
                      f"from val or test. {_remedy(minimum, len(short))}", SmallClassWarning, stacklevel=2)
    return pd.Series(split, index=records.index, name="split", dtype=object)


SPLIT_EXCLUDED = "excluded"   # rows in no split (prepare.EXCLUDED)


class SourceSplitError(ValueError):
    """A split by source that cannot be made: no source column, or an unknown source named."""


def source_split(records: pd.DataFrame, test_sources: Sequence[str], val_fraction: float = 0.15, seed: int = 0,
                 *, classes: Sequence[str] | None = None) -> pd.Series:
    """Every image of `test_sources` in test; val drawn (lesion-grouped, stratified) from the other sources.

    Images of other sources that show a lesion of the test sources are 'excluded' (in no split).

    A test of generalisation: the model never sees the held-out clinic or
    device, as it will not see the user's. `val_fraction` is of the images
    left for training.
    """
    sources = records["source"] if "source" in records else pd.Series([None] * len(records), index=records.index)
    known = sorted({str(s) for s in sources if s is not None})
    if not known:
        raise SourceSplitError("a split by source needs the data's source of every image (HAM10000's `dataset` "
                               "column; a `source` column in a folder's lesion_ids.csv); this data has none")
    unknown = sorted(set(test_sources) - set(known))
    if unknown:
        raise SourceSplitError(f"unknown source(s) {', '.join(unknown)}; the data's sources are {', '.join(known)}")
    missing = int(sources.isna().sum())
    if missing:
        raise SourceSplitError(f"{missing} image(s) have no source, so a split by source cannot place them")
    is_test = sources.isin(list(test_sources)).to_numpy()
    if is_test.all():
        raise SourceSplitError(f"every image is from {', '.join(test_sources)}: nothing is left to train on")
    split = pd.Series(np.where(is_test, "test", "train").astype(object), index=records.index, name="split")
    # A lesion photographed in a held-out source and in another (HAM10000 has a few) must not train:
    # its other photos are left out of every split rather than leak the test lesion into training.
    straddling = ~is_test & records["lesion_id"].isin(set(records.loc[is_test, "lesion_id"])).to_numpy()
    if straddling.any():
        split[straddling] = SPLIT_EXCLUDED
        warnings.warn(f"{int(straddling.sum())} image(s) of other sources show lesions that are also in "
                      f"{', '.join(test_sources)}; they are left out of training and validation", stacklevel=2)
    rest = records[~is_test & ~straddling]
    if val_fraction > 0:
        inner = lesion_grouped_split(rest, val_fraction, 0.0, seed, classes=classes)
        split.loc[inner.index] = inner.to_numpy()
    return split


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


def has_official_splits(records: pd.DataFrame) -> bool:
    """Whether the source's own train/val/test splits are used (every record has one, and all three occur):
    one ISIC 2018 set alone is all 'train' (or 'test'), and its split is drawn."""
    official = records["official_split"]
    return bool(official.notna().all()) and set(official) == set(OFFICIAL_SPLITS)


def official_or_grouped_split(
    dataset: LesionDataset,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    *,
    classes: Sequence[str] | None = None,
) -> pd.Series:
    """The source's own splits when every record has one and train/val/test all occur
    (DermaMNIST); otherwise a lesion-grouped split. ``classes`` names the labels in
    messages (None: the dataset's own class set, else HAM10000's)."""
    if has_official_splits(dataset.records):
        official = dataset.records["official_split"]
        return pd.Series(official.to_numpy(dtype=object), index=dataset.records.index, name="split")
    if classes is None:
        classes = getattr(dataset, "classes", None)
    return lesion_grouped_split(dataset.records, val_fraction, test_fraction, seed, classes=classes)


def write_split_csv(records: pd.DataFrame, split: pd.Series, path: Path) -> Path:
    """Save a split as CSV (image_id,lesion_id,label,split), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = records[["image_id", "lesion_id", "label"]].assign(split=split.reindex(records.index).to_numpy())
    if "source" in records and records["source"].notna().any():   # where each image came from, for the reader
        table["source"] = records["source"].to_numpy()
    if table["split"].isna().any():
        raise ValueError("split does not cover every record")
    return atomic_write_text(path, table.to_csv(index=False))


def read_split_csv(path: Path) -> pd.Series:
    """A saved split as a Series indexed by image_id (use `split_for_records` to align it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    # keep_default_na=False: an image or lesion called "NA" (or "null", "nan") is a name, not a missing value.
    try:
        table = pd.read_csv(path, dtype={"image_id": str, "lesion_id": str, "split": str}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"split file {path} is empty (no header, no rows)") from None
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


def split_for_records(records: pd.DataFrame, saved: pd.Series, missing: str | None = None) -> pd.Series:
    """Align a split read by `read_split_csv` to ``records``.

    A record the saved split does not list (an image added to the folder
    after the run split it) never joins one of the run's splits: with
    ``missing`` None that is an error, else it gets the split ``missing``
    and a warning names how many.
    """
    gone = saved[~saved.index.isin(records["image_id"])]
    if len(gone):
        # The run was split (and trained, or scored) with them: its figures now cover fewer images.
        per_split = ", ".join(f"{name} {count}" for name, count in gone.value_counts().sort_index().items())
        warnings.warn(f"{len(gone)} image(s) of the run's saved split are no longer in the data ({per_split}), "
                      f"e.g. {', '.join(map(str, gone.index[:5]))}; they are left out", stacklevel=2)
    split = records["image_id"].map(saved)
    absent = records.loc[split.isna(), "image_id"].tolist()
    if absent and missing is None:
        raise ValueError(f"{len(absent)} record(s) are not in the saved split, e.g. {', '.join(absent[:10])}")
    if absent:
        warnings.warn(f"{len(absent)} image(s) are not in the run's saved split (added since?) and are left out, "
                      f"e.g. {', '.join(absent[:5])}", stacklevel=2)
        split = split.fillna(missing)
    return split.rename("split").astype(object)
