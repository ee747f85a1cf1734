"""Class folders: ``root/<class code>/<images>``, for any images sorted by hand.

An image is any file Pillow reads (JPEG, PNG, BMP, TIFF, WebP...), in the class
folder or in folders below it: the same listing `dermalens predict` makes of
the root (`image_files.list_image_files`).

The class set comes from the folders: a folder of five HAM10000 classes
trains a five-way model, in HAM10000 order. Classes of one's own (``benign/``,
``malignant/``) are named with ``classes`` (`data.classes` in a config), in
the order the model should use. A folder that is not a class is one issue
for the whole folder (with a "did you mean" when the name is close to a
class), not one per file.

Folders hold no lesion ids, so each image is its own lesion unless a CSV
(``image_id,lesion_id``) says which photos show one lesion: ``lesion_csv``,
or ``lesion_ids.csv`` in the root. An optional ``source`` column in it names
each image's clinic or device, for a split by source (`data.test_sources`).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

from dermalens.classes import CLASS_CODES, ham10000_order, suggest_class, validate_class_set

from ..image_files import ImageListing, ImageListingWarning, list_image_files, suffix_counts
from .base import (
    DataFormatError,
    DataIssue,
    DatasetReader,
    LesionDataset,
    RowFilter,
    flag_if_empty,
    is_blank,
    make_record,
    read_csv_table,
    records_frame,
)

log = logging.getLogger(__name__)
LESION_CSV = "lesion_ids.csv"  # picked up from the root when no lesion_csv is named


def read_class_folders(root: Path, classes: Sequence[str] | None = None,
                       lesion_csv: Path | str | None = None) -> LesionDataset:
    """Read ``root/<class code>/<image files>`` (e.g. ``root/mel/x.jpg``, ``root/nv/2019/y.bmp``).

    classes: the class codes, in order; None = the HAM10000 codes among the
    folder names (case-insensitive), in HAM10000 order. lesion_csv: a CSV with
    columns image_id (the file stem) and lesion_id; without one, lesion_id =
    image_id (the file stem, which must be unique).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"class-folder root not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataFormatError(
            f"{root} has no subfolders; expected one folder per class named {', '.join(classes or CLASS_CODES)}"
        )
    vocabulary = validate_class_set(classes, "data.classes") if classes is not None else CLASS_CODES
    listings = {folder: list_image_files(folder) for folder in folders}
    images = {folder: listing.images for folder, listing in listings.items()}
    _warn_loose_images(root)
    row_filter = RowFilter()
    class_folders = []
    for folder in folders:
        if folder.name.lower() in vocabulary:
            class_folders.append(folder)
            continue
        if folder.name.lower() in CLASS_CODES:   # a HAM10000 class the given set (a model's) does not have
            row_filter.issues.append(DataIssue(
                "unknown_label", "", str(folder), f"folder {folder.name!r} ({len(images[folder])} images): class "
                f"{folder.name.lower()!r} is not one of the classes {', '.join(vocabulary)}"))
            continue
        hint = suggest_class(folder.name, vocabulary)
        fix = (f"rename it to {hint!r}" if hint else "rename it to a class code") + (
            "" if classes is not None else ", or name your own classes with --set data.classes=[...]")
        row_filter.issues.append(DataIssue(
            "unknown_label", "", str(folder),
            f"folder {folder.name!r} ({len(images[folder])} images) is not a class"
            + (f": did you mean {hint!r}?" if hint else ".") + f" Classes: {', '.join(vocabulary)}; {fix}"))
    dataset_classes = tuple(vocabulary) if classes is not None else ham10000_order(f.name for f in class_folders)
    lesion_of, source_of = read_lesion_ids(root, lesion_csv)
    rows = []
    for folder in class_folders:
        listing = listings[folder]
        if not images[folder]:
            row_filter.issues.append(DataIssue("empty", "", str(folder), _no_images(folder, listing)))
            continue
        listing.warn(f"class folder {folder.name}", stacklevel=3)
        label = dataset_classes.index(folder.name.lower())
        for file in images[folder]:
            if row_filter.accept_id(file.stem, str(file), f"{folder.name}/{file.name}"):
                rows.append(make_record(file.stem, lesion_of.get(file.stem, file.stem), label, path=str(file),
                                        source=source_of.get(file.stem)))
    records = records_frame(rows)
    flag_if_empty(records, row_filter.issues, root)
    if lesion_of:
        unnamed = sum(1 for row in rows if row["image_id"] not in lesion_of)
        if unnamed:
            log.warning("%d of %d images in %s have no row in the lesion-id CSV: each is taken as its own lesion",
                        unnamed, len(records), root)
    return LesionDataset(name="folder", root=root, records=records, issues=row_filter.issues,
                         classes=dataset_classes or CLASS_CODES)


def _no_images(folder: Path, listing: ImageListing) -> str:
    """Why a class folder gave no image: empty, or what its files were instead."""
    if not listing.not_images:
        return f"class folder {folder.name}/ holds no files" + (f" ({'; '.join(listing.problems)})"
                                                                 if listing.problems else "")
    seen = len(listing.not_images)
    return (f"class folder {folder.name}/: {seen} file(s) seen, none of them an image Pillow can read "
            f"({suffix_counts(listing.not_images)}; e.g. {listing.not_images[0].name}); convert them to JPEG or PNG")


def _warn_loose_images(root: Path) -> None:
    loose = list_image_files(root, recursive=False).images
    if loose:
        warnings.warn(f"{len(loose)} image(s) directly in {root} are in no class folder and are left out "
                      f"(e.g. {loose[0].name})", ImageListingWarning, stacklevel=3)


def read_lesion_ids(root: Path, lesion_csv: Path | str | None) -> tuple[dict[str, str], dict[str, str]]:
    """image_id -> lesion_id, and image_id -> source where the CSV has a ``source`` column (the clinic or
    device, for a split by source), from the lesion CSV (named, or ``root/lesion_ids.csv``); ({}, {}) without one."""
    if lesion_csv is None:
        if not (root / LESION_CSV).is_file():
            return {}, {}
        lesion_csv = root / LESION_CSV
    table = read_csv_table(Path(lesion_csv), ("image_id", "lesion_id"), "lesion-id CSV")
    blank = [str(i + 2) for i, (image, lesion) in enumerate(zip(table["image_id"], table["lesion_id"]))
             if is_blank(image) or is_blank(lesion)]
    if blank:
        raise DataFormatError(f"lesion-id CSV {lesion_csv}: empty image_id or lesion_id on line(s) "
                              f"{', '.join(blank[:10])}")
    ids: dict[str, str] = {}
    conflicts: dict[str, list[str]] = {}
    for line, (image, lesion) in enumerate(zip(table["image_id"], table["lesion_id"]), start=2):
        image, lesion = str(image).strip(), str(lesion).strip()
        if ids.setdefault(image, lesion) != lesion:   # one image, two lesions: which split it joins is a guess
            conflicts.setdefault(image, []).append(str(line))
    if conflicts:
        shown = "; ".join(f"{image} (again on line {', '.join(lines)})" for image, lines in list(conflicts.items())[:5])
        raise DataFormatError(f"lesion-id CSV {lesion_csv} gives {len(conflicts)} image(s) two lesion ids: {shown}")
    sources = ({str(image).strip(): str(source).strip() for image, source in zip(table["image_id"], table["source"])
                if not is_blank(source)} if "source" in table.columns else {})
    log.info("lesion ids for %d images from %s%s", len(ids), lesion_csv,
             f" (and the source of {len(sources)})" if sources else "")
    return ids, sources


def looks_like_class_folders(path: Path) -> bool:
    return path.is_dir() and any(p.is_dir() and p.name.lower() in CLASS_CODES for p in path.iterdir())


READER = DatasetReader(
    read=read_class_folders,
    options=("classes", "lesion_csv"),
    detect=looks_like_class_folders,
    looks_for=f"a folder with class subfolders named {', '.join(CLASS_CODES)}",
)
