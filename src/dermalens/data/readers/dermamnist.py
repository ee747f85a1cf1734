"""DermaMNIST (MedMNIST): one ``.npz`` holding the three official splits as arrays, and its download."""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np

from dermalens.classes import NUM_CLASSES

from .base import (
    OFFICIAL_SPLITS,
    DataFormatError,
    DataIssue,
    DatasetReader,
    DatasetUnavailable,
    LesionDataset,
    flag_if_empty,
    make_record,
    records_frame,
    require_file,
)

DERMAMNIST_URL = "https://zenodo.org/records/10519652/files/dermamnist.npz?download=1"
DERMAMNIST_FILENAME = "dermamnist.npz"
# MedMNIST v2 / MedMNIST+ DermaMNIST files by image size: (file name, MD5), as the
# `medmnist` package (3.0.2, medmnist/info.py) lists them on Zenodo record 10519652.
DERMAMNIST_FILES = {
    28: ("dermamnist.npz", "0744692d530f8e62ec473284d019b0c7"),
    64: ("dermamnist_64.npz", "b70a2f5635c6199aeaa28c31d7202e1f"),
    128: ("dermamnist_128.npz", "2defd784463fa5243564e855ed717de1"),
    224: ("dermamnist_224.npz", "8974907d8e169bef5f5b96bc506ae45d"),
}
DERMAMNIST_RECORD = "https://zenodo.org/records/10519652/files"


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
    require_file(npz_path, "DermaMNIST file")
    if not zipfile.is_zipfile(npz_path):   # np.load would call an empty file "No data left" and text "pickled"
        raise DataFormatError(f"DermaMNIST file {npz_path} is not a complete .npz archive (empty, cut short or not a zip file); "
                              "download it again")
    try:
        archive = np.load(npz_path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
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
            images, labels = _read_member(archive, npz_path, f"{split}_images"), \
                _read_member(archive, npz_path, f"{split}_labels").reshape(-1)
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
            rows.append(make_record(image_id, image_id, int(label), array_index=offset + i, official_split=split))
        offset += len(labels)
    records = records_frame(rows)
    flag_if_empty(records, issues, npz_path)
    return LesionDataset(name="dermamnist", root=npz_path.parent, records=records, images=all_images, issues=issues)


def download_dermamnist(dest_dir: Path, timeout: float = 30, url: str | None = None, size: int = 28,
                        md5: str | None = None) -> Path:
    """Download DermaMNIST at `size` (28, or MedMNIST+ 64/128/224) into ``dest_dir``; skipped when there.

    The file is written under a temporary name and renamed only once complete,
    its MD5 matches the published one and it reads as an .npz, so an
    interrupted or corrupted download never leaves a file behind. Raises
    DatasetUnavailable when the download fails (e.g. offline) or the checksum differs.
    """
    if size not in DERMAMNIST_FILES:
        raise ValueError(f"DermaMNIST comes at sizes {', '.join(map(str, DERMAMNIST_FILES))}, not {size}")
    filename, published_md5 = DERMAMNIST_FILES[size]
    url = url or f"{DERMAMNIST_RECORD}/{filename}?download=1"
    md5 = md5 if md5 is not None else (published_md5 if url.startswith(DERMAMNIST_RECORD) else None)
    dest_dir = Path(dest_dir)
    target = dest_dir / filename
    if target.is_file():
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=".dermamnist-", suffix=".part", dir=dest_dir)
    temp_path = Path(temp_name)
    digest = hashlib.md5()
    try:
        try:
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise DatasetUnavailable(
                f"could not download DermaMNIST from {url}: {error}. If this machine is offline, "
                f"download it elsewhere and place it at {target}"
            ) from error
        if md5 is not None and digest.hexdigest() != md5:
            raise DatasetUnavailable(f"download from {url} has MD5 {digest.hexdigest()}, expected {md5} "
                                     f"(incomplete or changed file); nothing was kept")
        try:
            if not zipfile.is_zipfile(temp_path):
                raise ValueError("not a zip file")
            with np.load(temp_path, allow_pickle=False) as archive:
                if "train_images" not in archive.files:
                    raise ValueError("no train_images key")
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise DatasetUnavailable(f"download from {url} is not a DermaMNIST .npz: {error}") from error
        os.replace(temp_path, target)
    finally:
        temp_path.unlink(missing_ok=True)
    return target


def _read_member(archive, npz_path: Path, key: str) -> np.ndarray:
    # np.load reads members lazily: a damaged (deflated) member fails only here, with zip or zlib errors.
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataFormatError(f"DermaMNIST file {npz_path} is damaged: its {key} cannot be read ({error})") from None


def looks_like_dermamnist(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".npz"
    return path.is_dir() and (path / DERMAMNIST_FILENAME).is_file()


READER = DatasetReader(
    read=read_dermamnist,
    detect=looks_like_dermamnist,
    looks_for=f"a .npz file or a folder with {DERMAMNIST_FILENAME} (DermaMNIST)",
)
