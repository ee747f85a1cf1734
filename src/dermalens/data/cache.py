"""Resize every image once and keep the result on disk.

Decoding 600x450 JPEGs every epoch starves the model on a small machine, so
images are decoded and resized once into a uint8 (N,size,size,3) array. The
array is stored under a key that changes whenever anything that went into it
changes (files, their size or mtime, the target size, the resize code), so a
stale cache is never reused, and an unchanged dataset is never decoded twice.

`geometry.fit_to_square` is THE geometry of dermalens: training (through
this cache) and inference must both use it with the model's policy, or the
model sees differently cropped or resampled pixels at test time than it was
trained on.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from dermalens.atomic_io import WRITER, atomic_write_text, remove_dead_writers_files, writer_tag
from dermalens.data.geometry import CENTER_SQUARE, check_geometry, fit_to_square
from dermalens.data.readers import DataIssue, LesionDataset
from dermalens.data.readers.images import max_image_pixels
from dermalens.user_cache import mark_used

log = logging.getLogger(__name__)

# Bump whenever fit_to_square changes its output, so old caches are not reused.
RESIZE_VERSION = "area-down-cubic-up-v3"   # v3: INTER_CUBIC by OpenCV's own code, not IPP
_DECODE_WORKERS = 2  # PIL and cv2 release the GIL while decoding/resizing
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, cv2.error)


def cache_key(dataset: LesionDataset, size: int, geometry: str = CENTER_SQUARE) -> str:
    """sha256 over everything the cached pixels depend on."""
    digest = hashlib.sha256()
    rows = []
    for image_id, path, array_index in zip(
        dataset.records["image_id"], dataset.records["path"], dataset.records["array_index"]
    ):
        if array_index >= 0:
            rows.append([image_id, int(array_index)])
        else:
            try:
                stat = os.stat(path)
                rows.append([image_id, path, stat.st_size, stat.st_mtime_ns])
            except (OSError, TypeError):  # missing file, or no path at all: decoding will report it
                rows.append([image_id, path, None, None])
    # The pixel limit decides which images decode at all: raising it (as its error message says to) must not
    # reuse the failures, and the blank rows, cached under the lower one.
    digest.update(json.dumps({"name": dataset.name, "size": int(size), "resize": RESIZE_VERSION, "geometry": geometry,
                              "max_image_pixels": max_image_pixels(), "rows": rows}).encode())
    if dataset.images is not None and (dataset.records["array_index"] >= 0).any():
        digest.update(memoryview(np.ascontiguousarray(dataset.images)).cast("B"))
    return digest.hexdigest()


def _decode_into(dataset: LesionDataset, row: int, size: int, geometry: str, out: np.ndarray) -> DataIssue | None:
    """Decode and resize one row into ``out[row]``; a DataIssue when that fails."""
    record = dataset.records.iloc[row]
    try:
        out[row] = fit_to_square(dataset.load_image(row), size, geometry)
    except FileNotFoundError as error:
        return DataIssue("missing_file", record["image_id"], record["path"], str(error))
    except _DECODE_ERRORS as error:
        return DataIssue("unreadable_image", record["image_id"], record["path"], str(error))
    return None


def _decode_all(dataset: LesionDataset, size: int, geometry: str, out: np.ndarray, progress: bool) -> list[DataIssue]:
    with ThreadPoolExecutor(_DECODE_WORKERS) as pool:
        results = pool.map(lambda row: _decode_into(dataset, row, size, geometry, out), range(len(dataset)))
        issues = [issue for issue in tqdm(results, total=len(dataset), disable=not progress,
                                           desc=f"caching {dataset.name} at {size}px") if issue]
    return issues


def _load_cached(array_path: Path, issues_path: Path, expected_shape: tuple) -> tuple[np.ndarray, list[DataIssue]] | None:
    if not (array_path.is_file() and issues_path.is_file()):
        return None
    try:
        images = np.load(array_path, mmap_mode="r")
        issues = [DataIssue(**item) for item in json.loads(issues_path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        return None  # unreadable cache: rebuild rather than fail
    if images.shape != expected_shape or images.dtype != np.uint8:
        return None
    mark_used(array_path)   # `dermalens cache --older-than` goes by last use
    return images, issues


# mkstemp's names for an array being written: ".<name>-<size>px-<geometry>-<sha256>-w<host>-<pid>-<random>.npy.tmp"
# (earlier versions named no writer: those go by their age).
_TEMP_NAME = re.compile(r"\..+-\d+px-[a-z_]+-[0-9a-f]{64}(?:-w" + WRITER + r")?-[A-Za-z0-9_]+\.npy\.tmp")
STALE_TEMP_S = 3600.0   # no cache is written for an hour without its temp file growing


def remove_stale_temp_files(cache_dir: Path, older_than: float = STALE_TEMP_S) -> list[Path]:
    """Delete the temp arrays a killed run left in `cache_dir` (ours by name): at once when the process
    named in it (on this machine) has ended; another machine's, or one naming no writer, once untouched
    for `older_than` seconds (it may be written right now). Each is said in the log."""
    return remove_dead_writers_files(Path(cache_dir), _TEMP_NAME, "run's image cache", foreign_age=older_than)


def build_image_cache(
    dataset: LesionDataset, size: int, cache_dir: Path | None, progress: bool = True,
    geometry: str = CENTER_SQUARE,
) -> tuple[np.ndarray, list[DataIssue]]:
    """uint8 (N,size,size,3) images aligned with ``dataset.records``, plus decode issues.

    Images that cannot be decoded are reported as ``unreadable_image`` issues
    (``missing_file`` when the file vanished) and their slot is left black, so
    this pass doubles as the decode check. With ``cache_dir`` the result is
    stored there and later calls with an unchanged dataset memory-map it
    instead of decoding anything.
    """
    shape = (len(dataset), size, size, 3)
    if cache_dir is None or len(dataset) == 0:
        images = np.zeros(shape, dtype=np.uint8)
        return images, _decode_all(dataset, size, check_geometry(geometry), images, progress)

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(cache_dir)
    stem = f"{dataset.name}-{size}px-{geometry}-{cache_key(dataset, size, check_geometry(geometry))}"
    array_path, issues_path = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.issues.json"
    cached = _load_cached(array_path, issues_path, shape)
    if cached is not None:
        return cached

    # Decode straight into a memory-mapped temp file: a 224px HAM10000 cache is
    # ~1.5 GB, which need not fit in RAM. The rename makes it visible only once
    # complete, so an interrupted run never leaves a corrupt cache behind.
    handle, temp_name = tempfile.mkstemp(prefix=f".{stem}-w{writer_tag()}-", suffix=".npy.tmp", dir=cache_dir)
    os.close(handle)
    try:
        images = np.lib.format.open_memmap(temp_name, mode="w+", dtype=np.uint8, shape=shape)
        issues = _decode_all(dataset, size, geometry, images, progress)
        images.flush()
        del images
        atomic_write_text(issues_path, json.dumps([asdict(i) for i in issues], indent=1))
        os.replace(temp_name, array_path)
    finally:
        Path(temp_name).unlink(missing_ok=True)
    return np.load(array_path, mmap_mode="r"), issues
