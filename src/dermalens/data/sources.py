"""Readers that turn every supported dataset layout into one `LesionDataset`.

Every reader produces the same table (`LesionDataset.records`) so the rest of
dermalens (splitting, caching, training, evaluation) never needs to know where
the images came from:

=============== ===========================================================
column          meaning
=============== ===========================================================
image_id        unique id of the image (``ISIC_0024306``, ``dermamnist_train_00000``)
lesion_id       id of the physical lesion; several images may show one lesion
label           class index into `dermalens.classes.CLASS_CODES`
path            image file (str) for file-backed sources, else None
array_index     row in `LesionDataset.images` for array-backed sources, else -1
official_split  'train' / 'val' / 'test' where the source defines splits, else None
=============== ===========================================================

Reading never crashes on a bad row: rows with an unknown label, a duplicate
image id or a missing image file are left out of ``records`` and described in
``issues`` instead, so the caller can decide (see `validation.apply_bad_data_policy`).
Only a layout that cannot be read at all raises `DataFormatError`.
"""
from __future__ import annotations

import inspect
import math
import os
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from dermalens.classes import CLASS_CODES, ISIC2018_COLUMNS, NUM_CLASSES, class_index

RECORD_COLUMNS = ("image_id", "lesion_id", "label", "path", "array_index", "official_split")
ISSUE_KINDS = ("missing_file", "unreadable_image", "unknown_label", "duplicate_id", "empty")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
OFFICIAL_SPLITS = ("train", "val", "test")

DERMAMNIST_URL = "https://zenodo.org/records/10519652/files/dermamnist.npz?download=1"
DERMAMNIST_FILENAME = "dermamnist.npz"
HAM10000_METADATA = "HAM10000_metadata.csv"
HAM10000_SAMPLE_DIR = "ham10000_sample"
ISIC2018_SPLITS = ("Training", "Validation", "Test")


class DataFormatError(ValueError):
    """The dataset layout itself is unusable (file missing, columns or keys missing)."""


class DatasetUnavailable(RuntimeError):
    """A dataset could not be fetched (offline, server down, bad download)."""


class UnreadableImageError(OSError):
    """An image file exists but cannot be decoded; the message names the file."""


@dataclass
class DataIssue:
    """One bad item, named so a person can find and fix it."""

    kind: str  # one of ISSUE_KINDS
    image_id: str
    path: str | None
    detail: str


@dataclass
class LesionDataset:
    name: str  # 'ham10000' | 'isic2018' | 'dermamnist' | 'folder' | 'synthetic'
    root: Path
    records: pd.DataFrame  # columns RECORD_COLUMNS, index 0..n-1
    images: np.ndarray | None = None  # uint8 (M,H,W,3) for array-backed sources
    issues: list[DataIssue] = field(default_factory=list)  # rows NOT in records
    is_synthetic: bool = False

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, row: int) -> np.ndarray:
        """RGB uint8 HxWx3 image of ``records.iloc[row]``."""
        record = self.records.iloc[row]
        array_index = int(record["array_index"])
        if array_index >= 0:
            if self.images is None:
                raise ValueError(
                    f"{self.name}: record {record['image_id']} points at array row "
                    f"{array_index} but the dataset holds no image array"
                )
            # A copy, so a caller that edits the image in place cannot corrupt
            # the shared array every other record also reads from.
            return np.array(self.images[array_index], dtype=np.uint8)
        path = record["path"]
        if not isinstance(path, str) or not path:
            raise ValueError(f"{self.name}: record {record['image_id']} has neither a file nor an array row")
        return decode_image_file(path)

    def class_counts(self) -> dict[str, int]:
        """Images per class code, every class listed (zero included), in label order."""
        counts = np.bincount(self.records["label"].to_numpy(dtype=np.int64), minlength=NUM_CLASSES)
        return {code: int(counts[i]) for i, code in enumerate(CLASS_CODES)}

    def subset(self, rows: Sequence[int] | np.ndarray | pd.Series) -> LesionDataset:
        """The dataset restricted to ``rows`` (positions, or a boolean mask).

        Records are re-indexed 0..n-1; the image array is shared, not copied.
        """
        rows_array = np.asarray(rows)
        if rows_array.dtype == bool:
            if len(rows_array) != len(self.records):
                raise ValueError(f"boolean mask has {len(rows_array)} entries for {len(self.records)} records")
            rows_array = np.flatnonzero(rows_array)
        records = self.records.iloc[rows_array.astype(np.int64)].reset_index(drop=True)
        return LesionDataset(
            name=self.name,
            root=self.root,
            records=records,
            images=self.images,
            issues=list(self.issues),
            is_synthetic=self.is_synthetic,
        )


_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB uint8 (grey, CMYK, palette, RGBA...).

    16-bit grey is scaled to 8 bits: Pillow's convert('RGB') clips it to
    white, which would silently feed the model a blank image.
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(grey, initial=0.0) <= 1.0 else 1.0
        grey = np.clip(np.nan_to_num(grey * scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def decode_image_file(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to RGB uint8 HxWx3, honouring the EXIF orientation.

    Raises FileNotFoundError or UnreadableImageError, both naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            # Phone/camera images may be stored rotated with an EXIF tag;
            # the model must see them the way a person does.
            upright = ImageOps.exif_transpose(image)
            return pil_to_rgb(upright)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"cannot decode image {path}: {error}") from error


def records_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """Build a records table with the standard columns and dtypes."""
    frame = pd.DataFrame(list(rows), columns=list(RECORD_COLUMNS))
    frame["image_id"] = frame["image_id"].astype(str)
    frame["lesion_id"] = frame["lesion_id"].astype(str)
    frame["label"] = frame["label"].astype(np.int64)
    frame["array_index"] = frame["array_index"].astype(np.int64)
    # object dtype keeps None as None (not NaN) for the optional columns.
    frame["path"] = frame["path"].astype(object).where(frame["path"].notna(), None)
    frame["official_split"] = frame["official_split"].astype(object).where(frame["official_split"].notna(), None)
    return frame.reset_index(drop=True)


def _record(image_id: str, lesion_id: str, label: int, path: str | None = None,
            array_index: int = -1, official_split: str | None = None) -> dict:
    return {"image_id": image_id, "lesion_id": lesion_id, "label": int(label), "path": path,
            "array_index": int(array_index), "official_split": official_split}


def _is_blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataFormatError(f"{what} not found: {path}")


def _read_csv(path: Path, required_columns: Sequence[str], what: str) -> pd.DataFrame:
    _require_file(path, what)
    try:
        # dtype=str so ids like '0001' keep their zeros and labels are parsed by us.
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{what} {path} is not a readable CSV: {error}") from error
    missing = [c for c in required_columns if c not in table.columns]
    if missing:
        raise DataFormatError(
            f"{what} {path} lacks required column(s) {', '.join(missing)}; "
            f"found: {', '.join(map(str, table.columns))}"
        )
    return table


def index_image_files(image_dirs: Iterable[Path]) -> dict[str, Path]:
    """Map image id (file stem) -> file, over the top level of each folder.

    The first folder that holds an id wins, and within a folder .jpg beats
    .jpeg beats .png, so the result does not depend on directory listing order.
    """
    found: dict[str, Path] = {}
    for folder in image_dirs:
        if not folder.is_dir():
            continue
        files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        files.sort(key=lambda p: (IMAGE_SUFFIXES.index(p.suffix.lower()), p.name))
        for file in files:
            found.setdefault(file.stem, file)
    return found


class _RowFilter:
    """Collects the issues shared by every reader: empty ids, duplicates, bad labels."""

    def __init__(self) -> None:
        self.issues: list[DataIssue] = []
        self._seen: set[str] = set()

    def accept_id(self, image_id, path: str | None, where: str) -> bool:
        if _is_blank(image_id):
            self.issues.append(DataIssue("empty", "", path, f"{where}: no image id"))
            return False
        image_id = str(image_id).strip()
        if image_id in self._seen:
            self.issues.append(DataIssue(
                "duplicate_id", image_id, path, f"{where}: image id already used by an earlier row; kept the first"
            ))
            return False
        self._seen.add(image_id)
        return True

    def label_of(self, code, image_id: str, path: str | None, where: str) -> int | None:
        try:
            if _is_blank(code):
                raise ValueError("no label given")
            return class_index(str(code))
        except ValueError as error:
            self.issues.append(DataIssue("unknown_label", image_id, path, f"{where}: {error}"))
            return None


def _flag_if_empty(records: pd.DataFrame, issues: list[DataIssue], source: Path) -> None:
    if records.empty:
        issues.append(DataIssue("empty", "", str(source), f"no usable images found in {source}"))


# --------------------------------------------------------------------------- HAM10000


def read_ham10000_metadata(metadata_csv: Path) -> tuple[pd.DataFrame, list[DataIssue]]:
    """Labelled records of a HAM10000 metadata CSV, without looking for images.

    ``path`` is None for every record. Useful on its own for splitting or for
    class statistics of the full dataset when only part of the images exist.
    """
    metadata_csv = Path(metadata_csv)
    table = _read_csv(metadata_csv, ("lesion_id", "image_id", "dx"), "HAM10000 metadata CSV")
    row_filter = _RowFilter()
    rows = []
    for line, (lesion_id, image_id, dx) in enumerate(
        zip(table["lesion_id"], table["image_id"], table["dx"]), start=2
    ):
        where = f"{metadata_csv.name} line {line}"
        if not row_filter.accept_id(image_id, None, where):
            continue
        image_id = str(image_id).strip()
        label = row_filter.label_of(dx, image_id, None, where)
        if label is None:
            continue
        if _is_blank(lesion_id):
            row_filter.issues.append(DataIssue("empty", image_id, None, f"{where}: no lesion_id"))
            continue
        rows.append(_record(image_id, str(lesion_id).strip(), label))
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
            DataIssue("missing_file", image_id, None, f"no {image_id}.jpg/.jpeg/.png in: {searched}")
            for image_id in records.loc[~has_file, "image_id"]
        )
    records = records_frame(records.assign(path=paths)[has_file].to_dict("records"))
    _flag_if_empty(records, issues, root)
    return LesionDataset(name="ham10000", root=root, records=records, issues=issues)


# --------------------------------------------------------------------------- ISIC 2018


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
            table = _read_csv(candidate, ("image", "lesion_id"), "ISIC 2018 lesion groupings CSV")
            return {str(i).strip(): str(l).strip() for i, l in zip(table["image"], table["lesion_id"])
                    if not _is_blank(l)}
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
    table = _read_csv(gt_csv, ("image", *ISIC2018_COLUMNS), "ISIC 2018 ground-truth CSV")
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
    row_filter = _RowFilter()
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
            issues.append(DataIssue("unknown_label", image_id, None,
                                    f"{where}: ground truth {one_hot} is not exactly one-hot"))
            continue
        file = files.get(image_id)
        if file is None:
            issues.append(DataIssue("missing_file", image_id, None, f"no {image_id}.jpg/.jpeg/.png in {input_dir}"))
            continue
        rows.append(_record(image_id, lesion_ids.get(image_id, image_id), label_of_column[column],
                            path=str(file), official_split=official_split))
    records = records_frame(rows)
    _flag_if_empty(records, issues, root)
    return LesionDataset(name="isic2018", root=root, records=records, issues=issues)


# --------------------------------------------------------------------------- DermaMNIST


def read_dermamnist(npz_path: Path) -> LesionDataset:
    """Read a MedMNIST ``dermamnist.npz`` (a file, or a folder holding one).

    All three official splits go into one dataset, ``official_split`` telling
    them apart; image ids are ``dermamnist_<split>_<index>``. DermaMNIST carries
    no lesion ids and its official splits are per *image*, so images of one
    lesion can sit in both train and test; lesion_id = image_id here, which
    makes lesion-grouped splitting of DermaMNIST equivalent to per-image
    splitting. Prefer HAM10000 metadata when leakage-free numbers matter.
    """
    npz_path = Path(npz_path)
    if npz_path.is_dir():
        npz_path = npz_path / DERMAMNIST_FILENAME
    _require_file(npz_path, "DermaMNIST file")
    try:
        archive = np.load(npz_path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataFormatError(f"DermaMNIST file {npz_path} is not a readable .npz: {error}") from error
    with archive:
        required = [f"{s}_{kind}" for s in OFFICIAL_SPLITS for kind in ("images", "labels")]
        missing = [k for k in required if k not in archive.files]
        if missing:
            raise DataFormatError(
                f"DermaMNIST file {npz_path} lacks key(s) {', '.join(missing)}; found: {', '.join(archive.files)}"
            )
        images_per_split, labels_per_split = [], []
        for split in OFFICIAL_SPLITS:
            images, labels = archive[f"{split}_images"], archive[f"{split}_labels"].reshape(-1)
            if images.ndim != 4 or images.shape[-1] != 3:
                raise DataFormatError(
                    f"DermaMNIST file {npz_path}: {split}_images has shape {images.shape}, expected (N,H,W,3)"
                )
            if len(images) != len(labels):
                raise DataFormatError(
                    f"DermaMNIST file {npz_path}: {len(images)} {split} images but {len(labels)} labels"
                )
            images_per_split.append(images.astype(np.uint8, copy=False))
            labels_per_split.append(labels)

    all_images = np.concatenate(images_per_split)
    rows, issues = [], []
    offset = 0
    for split, labels in zip(OFFICIAL_SPLITS, labels_per_split):
        for i, label in enumerate(labels.tolist()):
            image_id = f"dermamnist_{split}_{i:05d}"
            if not (float(label).is_integer() and 0 <= label < NUM_CLASSES):
                issues.append(DataIssue("unknown_label", image_id, None,
                                        f"{npz_path.name} {split}_labels[{i}] = {label}, expected 0..{NUM_CLASSES - 1}"))
                continue
            rows.append(_record(image_id, image_id, int(label), array_index=offset + i, official_split=split))
        offset += len(labels)
    records = records_frame(rows)
    _flag_if_empty(records, issues, npz_path)
    return LesionDataset(name="dermamnist", root=npz_path.parent, records=records, images=all_images, issues=issues)


def download_dermamnist(dest_dir: Path, timeout: float = 30, url: str = DERMAMNIST_URL) -> Path:
    """Download ``dermamnist.npz`` into ``dest_dir`` (skipped when already there).

    The file is written under a temporary name and renamed only once complete
    and readable, so an interrupted download never leaves a corrupt file.
    Raises DatasetUnavailable when the download fails (e.g. offline).
    """
    dest_dir = Path(dest_dir)
    target = dest_dir / DERMAMNIST_FILENAME
    if target.is_file():
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=".dermamnist-", suffix=".part", dir=dest_dir)
    temp_path = Path(temp_name)
    try:
        try:
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise DatasetUnavailable(
                f"could not download DermaMNIST from {url}: {error}. If this machine is offline, "
                f"download it elsewhere and place it at {target}"
            ) from error
        try:
            with np.load(temp_path, allow_pickle=False) as archive:
                if "train_images" not in archive.files:
                    raise ValueError("no train_images key")
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise DatasetUnavailable(f"download from {url} is not a DermaMNIST .npz: {error}") from error
        os.replace(temp_path, target)
    finally:
        temp_path.unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------- class folders


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
    row_filter = _RowFilter()
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
                rows.append(_record(file.stem, file.stem, label, path=str(file)))
    records = records_frame(rows)
    _flag_if_empty(records, row_filter.issues, root)
    return LesionDataset(name="folder", root=root, records=records, issues=row_filter.issues)


# --------------------------------------------------------------------------- synthetic


# Per class: blob colour (RGB), outline irregularity, texture. Chosen to echo
# the real dermoscopic cues loosely, and above all to be learnable by a small
# CNN, so that training smoke tests can check the loss really falls.
_SYNTHETIC_STYLES = {
    "akiec": {"colour": (205, 105, 95), "irregularity": 0.25, "texture": "scaly"},
    "bcc": {"colour": (225, 175, 175), "irregularity": 0.05, "texture": "vessels"},
    "bkl": {"colour": (165, 125, 75), "irregularity": 0.12, "texture": "dots"},
    "df": {"colour": (140, 90, 70), "irregularity": 0.05, "texture": "ring"},
    "mel": {"colour": (60, 35, 40), "irregularity": 0.38, "texture": "blotches"},
    "nv": {"colour": (125, 80, 50), "irregularity": 0.0, "texture": "smooth"},
    "vasc": {"colour": (175, 25, 60), "irregularity": 0.0, "texture": "lobules"},
}
_SYNTHETIC_IMAGES_PER_LESION = 3


def _synthetic_lesion_params(rng: np.random.Generator) -> dict:
    return {
        "centre": rng.uniform(-0.15, 0.15, size=2),
        "radius": rng.uniform(0.35, 0.55),
        "aspect": rng.uniform(0.75, 1.0),
        "angle": rng.uniform(0, np.pi),
        "phases": rng.uniform(0, 2 * np.pi, size=3),
        # Lighter or darker skin, with only a slight tint, never green or grey.
        "skin": np.array([225.0, 180.0, 150.0]) * rng.uniform(0.8, 1.05) + rng.uniform(-8, 8, size=3),
        "spots": rng.uniform(-0.6, 0.6, size=(8, 2)),
    }


def _draw_synthetic_image(label: int, lesion: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    style = _SYNTHETIC_STYLES[CLASS_CODES[label]]
    axis = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    # Each image of a lesion is a slightly shifted/rotated view of the same blob.
    cy, cx = lesion["centre"] + rng.normal(0, 0.04, size=2)
    angle = lesion["angle"] + rng.normal(0, 0.2)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / lesion["aspect"]
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    irregularity = style["irregularity"]
    p = lesion["phases"]
    boundary = lesion["radius"] * (1 + irregularity * (0.6 * np.sin(3 * theta + p[0])
                                                       + 0.3 * np.sin(5 * theta + p[1])
                                                       + 0.2 * np.sin(7 * theta + p[2])))
    if style["texture"] == "lobules":
        # A cluster of small round lobes instead of one blob.
        offsets = lesion["spots"][:4] * lesion["radius"] * 0.8
        lobe_r = np.min([np.hypot(u - oy, v - ox) for oy, ox in offsets], axis=0)
        mask = np.clip((lesion["radius"] * 0.45 - lobe_r) / 0.06, 0, 1)
    else:
        mask = np.clip((boundary - r) / 0.08, 0, 1)

    colour = np.array(style["colour"], dtype=float)
    lesion_rgb = np.broadcast_to(colour, (size, size, 3)).copy()
    texture = style["texture"]
    if texture == "scaly":
        lesion_rgb += rng.normal(0, 35, size=(size, size, 1))
    elif texture == "vessels":
        stripes = np.abs(np.sin(14 * u + 3 * np.sin(6 * v))) < 0.18
        lesion_rgb[stripes] = (190, 30, 40)
    elif texture == "dots":
        for sy, sx in lesion["spots"] * lesion["radius"]:
            lesion_rgb[np.hypot(u - sx, v - sy) < 0.06] = (90, 60, 35)
    elif texture == "ring":
        # Dermatofibroma-like: pale centre, darker rim.
        lesion_rgb[r < lesion["radius"] * 0.5] = (215, 185, 165)
    elif texture == "blotches":
        blue = np.sin(4 * u + p[0]) * np.sin(4 * v + p[1]) > 0.25
        lesion_rgb[blue] = (70, 80, 120)

    skin = lesion["skin"] * (1 - 0.12 * (xx**2 + yy**2))[..., None]  # soft vignette
    image = skin * (1 - mask[..., None]) + lesion_rgb * mask[..., None]
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_synthetic_dataset(n_per_class: int = 60, size: int = 64, seed: int = 0) -> LesionDataset:
    """A small, NOT real, dataset for tests and smoke runs (``is_synthetic=True``).

    Skin-toned images with a blob whose colour, outline and texture depend on
    the class, plus noise. About three images share each lesion id so that
    lesion-grouped splitting is exercised.
    """
    if n_per_class < 1 or size < 8:
        raise ValueError(f"need n_per_class >= 1 and size >= 8, got {n_per_class} and {size}")
    rng = np.random.default_rng(seed)
    images = np.empty((n_per_class * NUM_CLASSES, size, size, 3), dtype=np.uint8)
    rows = []
    for label, code in enumerate(CLASS_CODES):
        lesion = None
        for k in range(n_per_class):
            if k % _SYNTHETIC_IMAGES_PER_LESION == 0:
                lesion = _synthetic_lesion_params(rng)
            index = label * n_per_class + k
            images[index] = _draw_synthetic_image(label, lesion, size, rng)
            lesion_id = f"synthetic_{code}_lesion_{k // _SYNTHETIC_IMAGES_PER_LESION:04d}"
            rows.append(_record(f"synthetic_{code}_{k:04d}", lesion_id, label, array_index=index))
    return LesionDataset(name="synthetic", root=Path("<synthetic>"), records=records_frame(rows),
                         images=images, is_synthetic=True)


# --------------------------------------------------------------------------- auto-detection

DATASET_FORMATS = ("auto", "ham10000", "isic2018", "dermamnist", "folder", "synthetic")


def detect_format(path: Path) -> str:
    """Which reader fits ``path``; raises DataFormatError listing what was looked for."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".npz":
        return "dermamnist"
    if path.is_dir():
        if (path / DERMAMNIST_FILENAME).is_file():
            return "dermamnist"
        if (path / HAM10000_METADATA).is_file():
            return "ham10000"
        if available_isic2018_splits(path):
            return "isic2018"
        if any(p.is_dir() and p.name.lower() in CLASS_CODES for p in path.iterdir()):
            return "folder"
    raise DataFormatError(
        f"cannot tell what dataset {path} is. Looked for: a .npz file or a folder with "
        f"{DERMAMNIST_FILENAME} (DermaMNIST); a folder with {HAM10000_METADATA} (HAM10000); "
        "a folder with ISIC2018_Task3_<Training|Validation|Test>_GroundTruth.csv (ISIC 2018); "
        f"a folder with class subfolders named {', '.join(CLASS_CODES)}"
    )


def _reader_options(reader) -> set[str]:
    """Keyword options a reader accepts (everything after its path argument)."""
    return set(list(inspect.signature(reader).parameters)[1:])


def open_dataset(path: Path | str | None, fmt: str = "auto", **kw) -> LesionDataset:
    """Open any supported dataset; ``kw`` goes to the reader.

    fmt: auto | ham10000 | isic2018 | dermamnist | folder | synthetic. For
    'synthetic' ``path`` is ignored (may be None). With 'auto', options that
    the detected reader does not take are dropped (so one call can carry
    ``restrict_to_available`` whatever the folder turns out to be), but an
    option no reader knows is an error; auto-detected ISIC 2018 reads the
    Training set unless ``split=`` says otherwise.
    """
    if fmt not in DATASET_FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; use one of {', '.join(DATASET_FORMATS)}")
    if fmt == "synthetic":
        return make_synthetic_dataset(**kw)
    if path is None:
        raise ValueError(f"a dataset path is needed for format {fmt!r}")
    path = Path(path)
    readers = {"ham10000": read_ham10000, "isic2018": read_isic2018, "dermamnist": read_dermamnist,
               "folder": read_class_folders}
    if fmt == "auto":
        known = set().union(*(_reader_options(r) for r in readers.values()))
        unknown = sorted(set(kw) - known)
        if unknown:
            raise TypeError(f"open_dataset got unknown option(s) {', '.join(unknown)}; "
                            f"readers take: {', '.join(sorted(known))}")
        fmt = detect_format(path)
        kw = {k: v for k, v in kw.items() if k in _reader_options(readers[fmt])}
        if fmt == "isic2018" and "split" not in kw:
            kw["split"] = available_isic2018_splits(path)[0]
    return readers[fmt](path, **kw)
