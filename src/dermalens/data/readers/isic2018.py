"""ISIC 2018 Task 3: one-hot ground-truth CSV, ``..._Input`` image folder, optional lesion groupings, per set."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from dermalens.classes import ISIC2018_COLUMNS, class_index

from .base import (
    DataFormatError,
    DataIssue,
    DatasetReader,
    LesionDataset,
    RowFilter,
    flag_if_empty,
    index_image_files,
    is_blank,
    make_record,
    read_csv_table,
    records_frame,
)

ISIC2018_SPLITS = ("Training", "Validation", "Test")


def _isic2018_split_name(split: str) -> str:
    aliases = {"training": "Training", "train": "Training", "validation": "Validation",
               "val": "Validation", "test": "Test"}
    try:
        return aliases[split.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown ISIC 2018 split {split!r}; use one of {', '.join(ISIC2018_SPLITS)}") from None


def find_isic2018_ground_truth(root: Path, split: str) -> Path | None:
    """The GT CSV of a split: at the root, or inside the folder the ISIC zip unpacks to."""
    name = f"ISIC2018_Task3_{split}_GroundTruth"
    for candidate in (root / f"{name}.csv", root / name / f"{name}.csv"):
        if candidate.is_file():
            return candidate
    return None


def available_isic2018_splits(root: Path) -> list[str]:
    return [s for s in ISIC2018_SPLITS if find_isic2018_ground_truth(Path(root), s) is not None]


def _read_isic2018_lesion_ids(root: Path, split: str) -> dict[str, str] | None:
    name = f"ISIC2018_Task3_{split}_LesionGroupings.csv"
    for candidate in (root / name, root / f"ISIC2018_Task3_{split}_GroundTruth" / name):
        if candidate.is_file():
            table = read_csv_table(candidate, ("image", "lesion_id"), "ISIC 2018 lesion groupings CSV")
            return {str(image).strip(): str(lesion).strip()
                    for image, lesion in zip(table["image"], table["lesion_id"]) if not is_blank(lesion)}
    return None


def _one_hot_label(values: Sequence[str]) -> int | None:
    """Index of the single 1 in a one-hot row, or None when it is not exactly one-hot."""
    try:
        numbers = np.array([float(v) for v in values])
    except ValueError:
        return None
    if not np.all((numbers == 0) | (numbers == 1)) or numbers.sum() != 1:
        return None
    return int(np.argmax(numbers))


def read_isic2018(root: Path, split: str = "Training") -> LesionDataset:
    """Read one ISIC 2018 Task 3 set (Training, Validation or Test).

    Labels come from the one-hot ground-truth CSV; lesion ids from the
    LesionGroupings CSV when present. Without it every image counts as its own
    lesion (and a warning says so), because images of one lesion would
    otherwise leak across a train/test split unnoticed. ``official_split`` is
    the set read ('train', 'val' or 'test').
    """
    root = Path(root)
    split = _isic2018_split_name(split)
    if not root.is_dir():
        raise DataFormatError(f"ISIC 2018 root folder not found: {root}")
    gt_csv = find_isic2018_ground_truth(root, split)
    if gt_csv is None:
        raise DataFormatError(
            f"ISIC 2018 ground truth not found: looked for ISIC2018_Task3_{split}_GroundTruth.csv in {root} "
            f"and in {root / f'ISIC2018_Task3_{split}_GroundTruth'}"
        )
    table = read_csv_table(gt_csv, ("image", *ISIC2018_COLUMNS), "ISIC 2018 ground-truth CSV")
    input_dir = root / f"ISIC2018_Task3_{split}_Input"
    if not input_dir.is_dir():
        raise DataFormatError(f"ISIC 2018 image folder not found: {input_dir}")
    files = index_image_files([input_dir])
    lesion_ids = _read_isic2018_lesion_ids(root, split)
    if lesion_ids is None:
        warnings.warn(
            f"ISIC 2018 {split}: no ISIC2018_Task3_{split}_LesionGroupings.csv in {root}; "
            "each image is treated as its own lesion, so grouping by lesion is impossible "
            "and images of one lesion may land in different splits",
            stacklevel=2,
        )
        lesion_ids = {}

    # CSV column order differs from the label order (MEL first), so map by name.
    label_of_column = [class_index(column) for column in ISIC2018_COLUMNS]
    official_split = {"Training": "train", "Validation": "val", "Test": "test"}[split]
    row_filter = RowFilter()
    rows = []
    issues = row_filter.issues
    for line, (image_id, *one_hot) in enumerate(
        zip(table["image"], *(table[c] for c in ISIC2018_COLUMNS)), start=2
    ):
        where = f"{gt_csv.name} line {line}"
        if not row_filter.accept_id(image_id, None, where):
            continue
        image_id = str(image_id).strip()
        column = _one_hot_label(one_hot)
        if column is None:
            values = ", ".join(f"{name}={value}" for name, value in zip(ISIC2018_COLUMNS, one_hot))
            issues.append(DataIssue("unknown_label", image_id, None,
                                    f"{where}: ground truth {values} is not exactly one-hot"))
            continue
        file = files.get(image_id)
        if file is None:
            issues.append(DataIssue("missing_file", image_id, None,
                                    f"no image file named {image_id}.<jpg, png, ...> in {input_dir}"))
            continue
        rows.append(make_record(image_id, lesion_ids.get(image_id, image_id), label_of_column[column],
                            path=str(file), official_split=official_split))
    # An image the CSV does not list has no ground truth: named, never left out silently.
    listed = {str(image_id).strip() for image_id in table["image"]}
    for image_id, file in sorted(files.items()):
        if image_id not in listed:
            issues.append(DataIssue("unlabelled_image", image_id, str(file),
                                    f"{file} has no row in {gt_csv.name}, so no ground truth"))
    records = records_frame(rows)
    flag_if_empty(records, issues, root)
    return LesionDataset(name="isic2018", root=root, records=records, issues=issues)


def looks_like_isic2018(path: Path) -> bool:
    return path.is_dir() and bool(available_isic2018_splits(path))


def _first_available_split(root: Path) -> dict:
    # A detected folder may hold only the Validation or Test set; read the first one there.
    return {"split": available_isic2018_splits(root)[0]}


READER = DatasetReader(
    read=read_isic2018,
    options=("split",),
    detect=looks_like_isic2018,
    looks_for="a folder with ISIC2018_Task3_<Training|Validation|Test>_GroundTruth.csv (ISIC 2018)",
    auto_options=_first_available_split,
)
