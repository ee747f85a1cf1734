"""HAM10000: ``HAM10000_metadata.csv`` plus image folders (``HAM10000_images_part_1``, ...)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

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

HAM10000_METADATA = "HAM10000_metadata.csv"
HAM10000_SAMPLE_DIR = "ham10000_sample"
SOURCE_COLUMN = "dataset"


def read_ham10000_metadata(metadata_csv: Path) -> tuple[pd.DataFrame, list[DataIssue]]:
    """Labelled records of a HAM10000 metadata CSV, without looking for images.

    ``path`` is None for every record. Useful on its own for splitting or for
    class statistics of the full dataset when only part of the images exist.
    """
    metadata_csv = Path(metadata_csv)
    table = read_csv_table(metadata_csv, ("lesion_id", "image_id", "dx"), "HAM10000 metadata CSV")
    row_filter = RowFilter()
    rows = []
    # `dataset` names the clinic and device (rosendahl, vidir_modern, vidir_molemax, vienna_dias): the
    # source a split by source holds out (data.test_sources).
    sources = table[SOURCE_COLUMN] if SOURCE_COLUMN in table.columns else [None] * len(table)
    for line, (lesion_id, image_id, dx, source) in enumerate(
        zip(table["lesion_id"], table["image_id"], table["dx"], sources), start=2
    ):
        where = f"{metadata_csv.name} line {line}"
        if not row_filter.accept_id(image_id, None, where):
            continue
        image_id = str(image_id).strip()
        label = row_filter.label_of(dx, image_id, None, where)
        if label is None:
            continue
        if is_blank(lesion_id):
            row_filter.issues.append(DataIssue("empty", image_id, None, f"{where}: no lesion_id"))
            continue
        rows.append(make_record(image_id, str(lesion_id).strip(), label,
                                source=None if is_blank(source) else str(source).strip()))
    return records_frame(rows), row_filter.issues


def default_ham10000_image_dirs(root: Path) -> list[Path]:
    """HAM10000_images* subfolders, the root itself, and the 50-image sample folder."""
    dirs = sorted(p for p in root.glob("HAM10000_images*") if p.is_dir())
    dirs.append(root)
    if (root / HAM10000_SAMPLE_DIR).is_dir():
        dirs.append(root / HAM10000_SAMPLE_DIR)
    return dirs


def read_ham10000(
    root: Path,
    metadata_csv: Path | None = None,
    image_dirs: list[Path] | None = None,
    restrict_to_available: bool = False,
) -> LesionDataset:
    """Read the official HAM10000 layout (metadata CSV + image folders).

    Images are matched to metadata rows by image id (file stem). Metadata rows
    without an image are ``missing_file`` issues, unless
    ``restrict_to_available`` is set: then they are dropped silently, which is
    what a partial download or the sample folder needs.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"HAM10000 root folder not found: {root}")
    metadata_csv = Path(metadata_csv) if metadata_csv is not None else root / HAM10000_METADATA
    records, issues = read_ham10000_metadata(metadata_csv)
    dirs = [Path(d) for d in image_dirs] if image_dirs is not None else default_ham10000_image_dirs(root)
    files = index_image_files(dirs)

    paths = records["image_id"].map(lambda image_id: str(files[image_id]) if image_id in files else None)
    has_file = paths.notna().to_numpy()
    if not restrict_to_available:
        searched = ", ".join(str(d) for d in dirs)
        issues.extend(
            DataIssue("missing_file", image_id, None, f"no image file named {image_id}.<jpg, png, ...> in: {searched}")
            for image_id in records.loc[~has_file, "image_id"]
        )
    records = records_frame(records.assign(path=paths)[has_file].to_dict("records"))
    flag_if_empty(records, issues, root)
    return LesionDataset(name="ham10000", root=root, records=records, issues=issues)


def looks_like_ham10000(path: Path) -> bool:
    return path.is_dir() and (path / HAM10000_METADATA).is_file()


READER = DatasetReader(
    read=read_ham10000,
    options=("metadata_csv", "image_dirs", "restrict_to_available"),
    detect=looks_like_ham10000,
    looks_for=f"a folder with {HAM10000_METADATA} (HAM10000)",
)
