"""Class folders: ``root/<class code>/*.jpg|*.jpeg|*.png``, for any images sorted by hand."""
from __future__ import annotations

from pathlib import Path

from dermalens.classes import CLASS_CODES

from .base import (
    IMAGE_SUFFIXES,
    DataFormatError,
    DataIssue,
    DatasetReader,
    LesionDataset,
    RowFilter,
    flag_if_empty,
    make_record,
    records_frame,
)


def read_class_folders(root: Path) -> LesionDataset:
    """Read ``root/<class code>/*.jpg|*.jpeg|*.png`` (e.g. ``root/mel/x.jpg``).

    Folder names are class codes (case-insensitive). Files in a folder whose
    name is not a class code become ``unknown_label`` issues. No lesion ids are
    known, so lesion_id = image_id (the file stem, which must be unique).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"class-folder root not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataFormatError(
            f"{root} has no subfolders; expected one folder per class named {', '.join(CLASS_CODES)}"
        )
    row_filter = RowFilter()
    rows = []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            row_filter.issues.append(DataIssue("empty", "", str(folder), f"folder {folder.name} holds no images"))
            continue
        for file in files:
            where = f"{folder.name}/{file.name}"
            if not row_filter.accept_id(file.stem, str(file), where):
                continue
            label = row_filter.label_of(folder.name, file.stem, str(file), f"folder {folder.name!r}")
            if label is not None:
                rows.append(make_record(file.stem, file.stem, label, path=str(file)))
    records = records_frame(rows)
    flag_if_empty(records, row_filter.issues, root)
    return LesionDataset(name="folder", root=root, records=records, issues=row_filter.issues)


def looks_like_class_folders(path: Path) -> bool:
    return path.is_dir() and any(p.is_dir() and p.name.lower() in CLASS_CODES for p in path.iterdir())


READER = DatasetReader(
    read=read_class_folders,
    detect=looks_like_class_folders,
    looks_for=f"a folder with class subfolders named {', '.join(CLASS_CODES)}",
)
