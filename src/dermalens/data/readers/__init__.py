"""Dataset readers: every supported layout becomes the same `LesionDataset`.

Laid out the way `timm.data.readers` is, one module per format behind one factory:

- `base`: what every reader shares: `LesionDataset` and `DataIssue` (its records table is
  described there), the errors, the record/CSV/image-folder helpers, and `DatasetReader`,
  the entry a format adds to the registry
- `images`: image decoding (`decode_image_file`, `pil_to_rgb`), also used by prediction
  and serving
- one module per format, each ending with ``READER = DatasetReader(...)`` (its read
  function, the options it takes, how to recognise it on disk): `ham10000`, `isic2018`,
  `dermamnist` (and its download), `folder` (class folders), `synthetic` (generated, NOT real)
- this module: the registry `READERS` (format name -> reader), `detect_format` and
  `open_dataset`

Adding a format is one module and one line in `READERS`. A new reader option also
becomes a keyword of `open_dataset`, which names every option explicitly so a typo
fails at the call; the registry test checks the two agree.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import dermamnist, folder, ham10000, isic2018, synthetic
from .base import (
    OFFICIAL_SPLITS,
    RECORD_COLUMNS,
    DataFormatError,
    DataIssue,
    DatasetReader,
    DatasetUnavailable,
    LesionDataset,
)
from .dermamnist import download_dermamnist, read_dermamnist
from .folder import read_class_folders
from .ham10000 import read_ham10000, read_ham10000_metadata
from .images import UnreadableImageError, decode_image_file, pil_to_rgb
from .isic2018 import read_isic2018
from .synthetic import make_synthetic_dataset

__all__ = [
    "DATASET_FORMATS", "OFFICIAL_SPLITS", "READERS", "RECORD_COLUMNS",
    "DataFormatError", "DataIssue", "DatasetReader", "DatasetUnavailable", "LesionDataset", "UnreadableImageError",
    "decode_image_file", "detect_format", "download_dermamnist", "make_synthetic_dataset", "open_dataset",
    "pil_to_rgb", "read_class_folders", "read_dermamnist", "read_ham10000", "read_ham10000_metadata", "read_isic2018",
]

# Auto-detection tries the formats in this order, so a dermamnist.npz beside a
# partial HAM10000 download is read as DermaMNIST.
READERS: dict[str, DatasetReader] = {
    "dermamnist": dermamnist.READER,
    "ham10000": ham10000.READER,
    "isic2018": isic2018.READER,
    "folder": folder.READER,
    "synthetic": synthetic.READER,
}
DATASET_FORMATS = ("auto", *READERS)


def detect_format(path: Path) -> str:
    """Which reader fits ``path``; raises DataFormatError listing what was looked for."""
    path = Path(path)
    for name, reader in READERS.items():
        if reader.detect is not None and reader.detect(path):
            return name
    looked_for = "; ".join(reader.looks_for for reader in READERS.values() if reader.detect is not None)
    raise DataFormatError(f"cannot tell what dataset {path} is. Looked for: {looked_for}")


def open_dataset(
    path: Path | str | None,
    fmt: str = "auto",
    *,
    split: str | None = None,
    restrict_to_available: bool | None = None,
    metadata_csv: Path | str | None = None,
    image_dirs: Sequence[Path | str] | None = None,
    n_per_class: int | None = None,
    size: int | None = None,
    seed: int | None = None,
    classes: Sequence[str] | None = None,
    lesion_csv: Path | str | None = None,
) -> LesionDataset:
    """Open any supported dataset.

    fmt: auto | ham10000 | isic2018 | dermamnist | folder | synthetic; for
    'synthetic' ``path`` is ignored (may be None). An option left at None is
    not given and the reader's own default applies:

    - ``split`` (isic2018): the set to read, Training | Validation | Test (or train | val | test)
    - ``restrict_to_available`` (ham10000): leave out metadata rows that have no image
      instead of reporting them as missing files
    - ``metadata_csv``, ``image_dirs`` (ham10000): metadata and image folders elsewhere
    - ``n_per_class``, ``size``, ``seed`` (synthetic)
    - ``classes`` (folder): the class codes, in order (default: the HAM10000 codes among the folders)
    - ``lesion_csv`` (folder): image_id,lesion_id for photos that show one lesion

    A named format refuses, with a TypeError, an option its reader does not
    take. With 'auto' only the options the detected reader takes are passed,
    so one call can carry ``restrict_to_available`` whatever the folder turns
    out to be. An ISIC 2018 folder (detected or named) reads the first set it
    holds (Training, Validation, Test) unless ``split`` names one.
    """
    if fmt != "auto" and fmt not in READERS:
        raise ValueError(f"unknown dataset format {fmt!r}; use one of {', '.join(DATASET_FORMATS)}")
    options = {"split": split, "restrict_to_available": restrict_to_available, "metadata_csv": metadata_csv,
               "image_dirs": image_dirs, "n_per_class": n_per_class, "size": size, "seed": seed,
               "classes": classes, "lesion_csv": lesion_csv}
    given = {name: value for name, value in options.items() if value is not None}
    if fmt != "auto" and not READERS[fmt].takes_path:
        return READERS[fmt].read(**_named_format_options(fmt, given))
    if path is None:
        raise ValueError(f"a dataset path is needed for format {fmt!r}")
    path = Path(path)
    if fmt != "auto":
        reader = READERS[fmt]
        # A named format reads a folder as 'auto' would once it knows the format (an ISIC 2018 folder holding
        # only the Test set reads that set); options given still win.
        fits = reader.auto_options is not None and reader.detect is not None and reader.detect(path)
        defaults = reader.auto_options(path) if fits else {}
        try:
            return reader.read(path, **{**defaults, **_named_format_options(fmt, given)})
        except DataFormatError as error:
            raise _with_format_hint(error, path, fmt) from None
    reader = READERS[detect_format(path)]
    detected_defaults = reader.auto_options(path) if reader.auto_options is not None else {}
    taken = {name: value for name, value in given.items() if name in reader.options}
    return reader.read(path, **{**detected_defaults, **taken})


def _with_format_hint(error: DataFormatError, path: Path, fmt: str) -> DataFormatError:
    """The reader's error, and what `path` looks like when another format fits it (class folders read as HAM10000)."""
    try:
        detected = detect_format(path)
    except DataFormatError:
        return error
    if detected == fmt:
        return error
    return DataFormatError(f"{error}. But {path} looks like {READERS[detected].looks_for}, not {fmt} data: "
                           f"use --set data.format={detected} (or --format {detected})")


def _named_format_options(fmt: str, given: dict) -> dict:
    """``given``, once every option in it is one the reader of ``fmt`` takes."""
    not_taken = [name for name in given if name not in READERS[fmt].options]
    if not_taken:
        takes = ", ".join(READERS[fmt].options) or "no options"
        raise TypeError(f"open_dataset: the {fmt} reader does not take {', '.join(not_taken)} (it takes: {takes})")
    return given
