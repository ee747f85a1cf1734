"""What every reader shares: the `LesionDataset` it returns, its errors, and the record helpers.

Every reader produces the same table (`LesionDataset.records`) so the rest of
dermalens (splitting, caching, training, evaluation) never needs to know where
the images came from:

=============== ===========================================================
column          meaning
=============== ===========================================================
image_id        unique id of the image (``ISIC_0024306``, ``dermamnist_train_00000``)
lesion_id       id of the physical lesion; several images may show one lesion
label           class index into the dataset's `classes` (HAM10000's 7 unless the data has its own)
path            image file (str) for file-backed sources, else None
array_index     row in `LesionDataset.images` for array-backed sources, else -1
official_split  'train' / 'val' / 'test' where the source defines splits, else None
source          the clinic / device an image came from where the data says (HAM10000's
                ``dataset`` column: rosendahl, vidir_modern, ...), else None
=============== ===========================================================

Reading never crashes on a bad row: rows with an unknown label, a duplicate
image id or a missing image file are left out of ``records`` and described in
``issues`` instead, so the caller can decide (see `validation.apply_bad_data_policy`).
Only a layout that cannot be read at all raises `DataFormatError`.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from dermalens.classes import CLASS_CODES, class_index

from ..image_files import IMAGE_SUFFIXES, list_image_files
from .images import decode_image_file

RECORD_COLUMNS = ("image_id", "lesion_id", "label", "path", "array_index", "official_split", "source")
ISSUE_KINDS = ("missing_file", "unreadable_image", "unknown_label", "unlabelled_image", "duplicate_id", "empty")
OFFICIAL_SPLITS = ("train", "val", "test")


class DataFormatError(ValueError):
    """The dataset layout itself is unusable (file missing, columns or keys missing)."""


class DatasetUnavailable(RuntimeError):
    """A dataset could not be fetched (offline, server down, bad download)."""


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
    classes: tuple[str, ...] = CLASS_CODES  # the class codes `label` indexes, in order

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
        counts = np.bincount(self.records["label"].to_numpy(dtype=np.int64), minlength=len(self.classes))
        return {code: int(counts[i]) for i, code in enumerate(self.classes)}

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
            classes=self.classes,
        )

    def with_classes(self, classes: Sequence[str]) -> LesionDataset:
        """The dataset labelled by another class set (a model's): labels are re-indexed by class code.

        Images of a class outside `classes` cannot be scored or learned as that
        class: they leave the records and become ``unknown_label`` issues, so the
        bad-data policy (error, or skip and record) decides, and says so.
        """
        classes = tuple(classes)
        if classes == self.classes:
            return self
        position = {code: i for i, code in enumerate(classes)}
        codes = np.asarray(self.classes, dtype=object)[self.records["label"].to_numpy(np.int64)]
        keep = np.array([code in position for code in codes], dtype=bool)
        issues = list(self.issues)
        for code in sorted(set(codes[~keep])):
            rows = self.records[codes == code]
            for _, row in rows.iterrows():
                issues.append(DataIssue("unknown_label", row["image_id"], row["path"],
                                        f"class {code!r} is not one of the classes {', '.join(classes)}"))
        records = self.records[keep].reset_index(drop=True).copy()
        records["label"] = np.array([position[code] for code in codes[keep]], dtype=np.int64)
        return LesionDataset(name=self.name, root=self.root, records=records, images=self.images, issues=issues,
                             is_synthetic=self.is_synthetic, classes=classes)


@dataclass(frozen=True)
class DatasetReader:
    """One dataset format as `open_dataset` and `detect_format` see it (one per reader module).

    read:         the reader, called ``read(path, **options)`` (``read(**options)`` if not takes_path)
    options:      the keyword options ``read`` takes; `open_dataset` refuses any other for this format
    detect:       does a path hold this format? None = never auto-detected (named only)
    looks_for:    what ``detect`` looks for, in words, for the error when no format fits
    auto_options: options to read with when the format was detected rather than named
                  (the caller's own options win)
    takes_path:   False for data that is generated, not read from disk
    """

    read: Callable[..., LesionDataset]
    options: tuple[str, ...] = ()
    detect: Callable[[Path], bool] | None = None
    looks_for: str = ""
    auto_options: Callable[[Path], dict] | None = None
    takes_path: bool = True


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
    frame["source"] = frame["source"].astype(object).where(frame["source"].notna(), None)
    return frame.reset_index(drop=True)


def make_record(image_id: str, lesion_id: str, label: int, path: str | None = None,
                array_index: int = -1, official_split: str | None = None, source: str | None = None) -> dict:
    """One row of a records table (see `records_frame`)."""
    return {"image_id": image_id, "lesion_id": lesion_id, "label": int(label), "path": path,
            "array_index": int(array_index), "official_split": official_split, "source": source}


def source_names(values: Iterable) -> np.ndarray:
    """Each value of a source column (the clinic or device of an image) as its name, None where it names none:
    None, NaN and pandas' NA alike. The one reading of that column for the sampler, the per-source figures and
    the prepared data."""
    return np.array([None if np.ndim(value) == 0 and pd.isna(value) else str(value) for value in values],
                    dtype=object)


def is_blank(value) -> bool:
    """None, NaN or only whitespace: a cell that says nothing."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def require_file(path: Path, what: str) -> None:
    """Raise DataFormatError naming ``what`` and ``path`` unless the file exists."""
    if path.is_dir():
        raise DataFormatError(f"{what} {path} is a folder; name the file itself")
    if not path.is_file():
        raise DataFormatError(f"{what} not found: {path}")


# Byte-order marks, longest first (the UTF-32 LE mark begins with the UTF-16 LE one).
_BOMS = ((b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\xef\xbb\xbf", "utf-8-sig"),
         (b"\xfe\xff", "utf-16-be"), (b"\xff\xfe", "utf-16-le"))


def csv_text(path: Path, what: str) -> str:
    """The text of a CSV file: UTF-8, or UTF-8/16/32 with a byte-order mark, or UTF-16 without one.

    Spreadsheet programs save CSVs with a byte-order mark, and Excel's
    "Unicode Text" is UTF-16; both are read. Anything else is refused with a
    DataFormatError naming the file and what it seems to be.
    """
    raw = path.read_bytes()
    if raw.startswith(b"PK\x03\x04"):
        raise DataFormatError(f"{what} {path} is a zip file (an Excel .xlsx workbook?), not a CSV: "
                              "save it as 'CSV UTF-8'")
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), None)
    head = raw[:1000]
    if encoding is None and len(head) >= 4 and head.count(0) >= len(head) // 3:
        # ASCII text in UTF-16 without a mark: every other byte is zero.
        encoding = "utf-16-le" if head[1::2].count(0) > head[0::2].count(0) else "utf-16-be"
    encoding = encoding or "utf-8"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise DataFormatError(
            f"{what} {path} is not {encoding.upper().replace('-SIG', '')} text: byte {raw[error.start]:#04x} on "
            f"line {line} cannot be read (save it as 'CSV UTF-8')") from None
    text = text.lstrip("\ufeff")
    if "\x00" in text:
        raise DataFormatError(f"{what} {path} holds NUL bytes: it is binary or in an encoding other than "
                              "UTF-8/UTF-16 (save it as 'CSV UTF-8')")
    return text


def _delimiter(text: str) -> str:
    """',' unless the header has none and has tabs (Excel's Unicode Text) or semicolons (Excel in many locales)."""
    header = text.split("\n", 1)[0]
    if "," in header:
        return ","
    return max(("\t", ";"), key=header.count) if ("\t" in header or ";" in header) else ","


def read_csv_table(path: Path, required_columns: Sequence[str], what: str) -> pd.DataFrame:
    """A CSV as strings; DataFormatError naming the file when it is unreadable or lacks a column.

    UTF-8 (with or without a byte-order mark) and UTF-16/32 are read; see `csv_text`.
    """
    require_file(path, what)
    text = csv_text(path, what)
    try:
        # dtype=str so ids like '0001' keep their zeros and labels are parsed by us.
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, sep=_delimiter(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataFormatError(f"{what} {path} is not a readable CSV: {error}") from error
    table.columns = [str(column).strip() for column in table.columns]
    missing = [c for c in required_columns if c not in table.columns]
    if missing:
        raise DataFormatError(
            f"{what} {path} lacks required column(s) {', '.join(missing)}; "
            f"found: {', '.join(map(str, table.columns))}"
        )
    return table


def index_image_files(image_dirs: Iterable[Path]) -> dict[str, Path]:
    """Map image id (file stem) -> image file, over the top level of each folder.

    Images are what `image_files.list_image_files` lists (any format Pillow
    reads). The first folder that holds an id wins, and within a folder .jpg
    beats .jpeg beats .png beats the other image extensions, so the result does
    not depend on directory listing order.
    """
    found: dict[str, Path] = {}
    for folder in image_dirs:
        if not folder.is_dir():
            continue
        files = list_image_files(folder, recursive=False).images

        def rank(path: Path) -> tuple[int, str]:
            suffix = path.suffix.lower()
            return (IMAGE_SUFFIXES.index(suffix) if suffix in IMAGE_SUFFIXES else len(IMAGE_SUFFIXES), path.name)

        for file in sorted(files, key=rank):
            found.setdefault(file.stem, file)
    return found


class RowFilter:
    """Collects the issues shared by every reader: empty ids, duplicates, bad labels."""

    def __init__(self) -> None:
        self.issues: list[DataIssue] = []
        self._seen: set[str] = set()

    def accept_id(self, image_id, path: str | None, where: str) -> bool:
        if is_blank(image_id):
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

    def label_of(self, code, image_id: str, path: str | None, where: str,
                 classes: Sequence[str] = CLASS_CODES) -> int | None:
        try:
            if is_blank(code):
                raise ValueError("no label given")
            return class_index(str(code), classes)
        except ValueError as error:
            self.issues.append(DataIssue("unknown_label", image_id, path, f"{where}: {error}"))
            return None


def flag_if_empty(records: pd.DataFrame, issues: list[DataIssue], source: Path) -> None:
    """Add an ``empty`` issue when a reader kept no record at all."""
    if records.empty:
        issues.append(DataIssue("empty", "", str(source), f"no usable images found in {source}"))

