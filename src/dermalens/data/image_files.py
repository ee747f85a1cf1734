"""Which image files a command was given: files, folders and glob patterns, in one place.

`predict`, `explain` and `export` all take the same kind of list. Lesion
masks that sit beside HAM10000/ISIC images (`*_segmentation.png`) are not
photos and are left out of folders and patterns.
"""
from __future__ import annotations

import fnmatch
import glob
from pathlib import Path
from typing import Sequence

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_EXCLUDE = ("*_segmentation.*",)   # HAM10000/ISIC lesion masks sit beside the images
_GLOB_CHARS = set("*?[")


class NoImagesFound(ValueError):
    """A folder or pattern that matched no image file."""


def find_image_files(inputs: Sequence[str | Path], exclude: Sequence[str] = DEFAULT_EXCLUDE) -> list[Path]:
    """Files as given; the image files of each folder (sorted, not recursive) and of each glob pattern.

    A folder or pattern without images raises NoImagesFound naming it. A file
    path that does not exist is kept: reading it reports it, and the other
    images are still answered.
    """
    def wanted(path: Path) -> bool:
        return (path.is_file() and path.suffix.lower() in PHOTO_SUFFIXES
                and not any(fnmatch.fnmatch(path.name, pattern) for pattern in exclude))

    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if wanted(p))
        elif path.is_file() or not (_GLOB_CHARS & set(str(item))):
            found.append(path)
            continue
        else:
            matches = sorted(p for p in map(Path, glob.glob(str(item), recursive=True)) if wanted(p))
        if not matches:
            raise NoImagesFound(f"no images found at {item} (looked for {', '.join(PHOTO_SUFFIXES)})")
        found.extend(matches)
    return found
