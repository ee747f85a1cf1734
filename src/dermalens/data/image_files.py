"""Which image files a command or a data reader was given: the one lister of dermalens.

`predict`, `explain`, `export` (calibration and parity images) and the class-
folder, HAM10000 and ISIC 2018 readers all list images here, so they agree on
what an image is:

- any format Pillow decodes (JPEG, PNG, BMP, TIFF, WebP, ...), by content: a
  file with one of Pillow's image extensions (any case) is listed, and the
  decoder names it if its content is not an image; a file with another or no
  extension is listed when Pillow recognises its content, and named as "not an
  image" otherwise;
- folders are listed with their subfolders (a tree of class folders is the
  usual way to hold labelled images), symlinked folders included; a link that
  leads back into the tree is named and not followed, so a loop cannot run
  forever;
- hidden files (``.DS_Store``, macOS ``._x.jpg`` resource forks) are skipped,
  and so are lesion masks that sit beside HAM10000/ISIC images
  (``*_segmentation.*``), which are not photos.
"""
from __future__ import annotations

import errno
import fnmatch
import glob
import os
import stat
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from PIL import EpsImagePlugin, Image, ImageFile, UnidentifiedImageError

DEFAULT_EXCLUDE = ("*_segmentation.*",)   # HAM10000/ISIC lesion masks sit beside the images
_GLOB_CHARS = set("*?[")
_PREFERRED_SUFFIXES = (".jpg", ".jpeg", ".png")
# Pillow identifies these but holds no decoder for them (MPEG), or needs an
# outside program that may be missing (EPS: Ghostscript).
_IDENTIFY_ONLY = {"MPEG"} | (set() if EpsImagePlugin.has_ghostscript() else {"EPS"})


def _decodable(fmt: str) -> bool:
    factory = Image.OPEN.get(fmt, (None,))[0]
    stub = isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)
    return fmt not in _IDENTIFY_ONLY and not stub


def _image_suffixes() -> tuple[str, ...]:
    Image.init()
    found = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN and _decodable(fmt)}
    return _PREFERRED_SUFFIXES + tuple(sorted(found - set(_PREFERRED_SUFFIXES)))


# Pillow's extensions for formats it can decode, the common ones first: the
# order in which a file of one name but several formats is chosen.
IMAGE_SUFFIXES = _image_suffixes()


class NoImagesFound(ValueError):
    """A folder or pattern that matched no image file."""


class ImageListingWarning(UserWarning):
    """Files left out of a listing (not images) or folders not followed (loops, no access)."""


@dataclass
class ImageListing:
    """What a listing saw: the images, the files that are not images, and what it could not follow."""

    images: list[Path] = field(default_factory=list)
    not_images: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # symlink loops, broken links, unreadable folders

    def extend(self, other: ImageListing) -> None:
        self.images += other.images
        self.not_images += other.not_images
        self.problems += other.problems

    def describe_not_images(self, limit: int = 5) -> str:
        """'3 files that are not images Pillow reads (2 .heic, 1 .txt): a.heic, b.heic, notes.txt'."""
        if not self.not_images:
            return ""
        return (f"{len(self.not_images)} file(s) that are not images Pillow reads ({suffix_counts(self.not_images)}): "
                + _some_names(self.not_images, limit))

    def warn(self, where: str, stacklevel: int = 2) -> None:
        """One warning for the files left out and one for the folders not followed, if any."""
        if self.not_images:
            warnings.warn(f"{where}: left out {self.describe_not_images()}", ImageListingWarning,
                          stacklevel=stacklevel + 1)
        if self.problems:
            warnings.warn(f"{where}: {'; '.join(self.problems[:5])}"
                          + (f"; and {len(self.problems) - 5} more" if len(self.problems) > 5 else ""),
                          ImageListingWarning, stacklevel=stacklevel + 1)


def suffix_counts(paths: Iterable[Path]) -> str:
    """'200 .heic, 1 without an extension': what kinds of files these are."""
    counts = Counter(p.suffix.lower() or "without an extension" for p in paths)
    return ", ".join(f"{n} {suffix}" for suffix, n in counts.most_common())


def _some_names(paths: Sequence[Path], limit: int) -> str:
    names = ", ".join(str(p) for p in paths[:limit])
    return names + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _content_is_image(path: Path) -> bool:
    """Does Pillow recognise an image format it can decode in the file's header?"""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return bool(image.format) and _decodable(image.format)
    except Image.DecompressionBombError:
        return True    # an image, too large: the decoder says so by name
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def is_image_file(path: Path) -> bool:
    """An image by name (one of Pillow's image extensions) or, failing that, by content."""
    return path.suffix.lower() in IMAGE_SUFFIXES or _content_is_image(path)


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return name.startswith(".") or any(fnmatch.fnmatch(name, pattern) for pattern in exclude)


def list_image_files(folder: str | os.PathLike, recursive: bool = True,
                     exclude: Sequence[str] = DEFAULT_EXCLUDE) -> ImageListing:
    """The image files in `folder` (and its subfolders when `recursive`), sorted by path.

    Symlinked files and folders are followed; a folder reached a second time
    (a link back into the tree, or a second link to one folder) is named in
    `problems` and not listed again.
    """
    listing = ImageListing()
    root = Path(folder)
    try:
        root_stat = os.stat(root)
    except OSError as error:
        listing.problems.append(f"cannot list {root}: {error.strerror}")
        return listing
    _walk(root, recursive, exclude, listing, visited={(root_stat.st_dev, root_stat.st_ino): root}, ancestors=set())
    listing.images.sort(key=lambda p: p.parts)
    listing.not_images.sort(key=lambda p: p.parts)
    return listing


def _walk(folder: Path, recursive: bool, exclude: Sequence[str], listing: ImageListing,
          visited: dict[tuple[int, int], Path], ancestors: set[tuple[int, int]]) -> None:
    """Walk one folder; `visited` maps every folder seen so far to its path, `ancestors` those above this one."""
    here = os.stat(folder)
    ancestors = ancestors | {(here.st_dev, here.st_ino)}
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        listing.problems.append(f"cannot list folder {folder}: {error.strerror}")
        return
    for entry in entries:
        if _excluded(entry.name, exclude):
            continue
        path = folder / entry.name
        try:
            info = entry.stat()   # follows symlinks
        except OSError as error:
            if entry.is_symlink():
                target = os.readlink(path)
                what = "a symlink loop" if error.errno == errno.ELOOP else "a broken link"
                listing.problems.append(f"{path} is {what} (to {target}), skipped")
            else:
                listing.problems.append(f"cannot read {path}: {error.strerror}")
            continue
        if stat.S_ISDIR(info.st_mode):
            if not recursive:
                continue
            key = (info.st_dev, info.st_ino)
            if key in ancestors:
                listing.problems.append(f"symlink loop: {path} leads back to {visited.get(key, 'a folder above it')}, "
                                        "not followed")
            elif key in visited:
                listing.problems.append(f"{path} is the folder {visited[key]} again, listed once")
            else:
                visited[key] = path
                _walk(path, recursive, exclude, listing, visited, ancestors)
        elif stat.S_ISREG(info.st_mode):
            (listing.images if is_image_file(path) else listing.not_images).append(path)


def _expand_pattern(pattern: str, exclude: Sequence[str], recursive: bool) -> ImageListing:
    listing = ImageListing()
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if path.is_dir():
            listing.extend(list_image_files(path, recursive, exclude))
        elif path.is_file() and not _excluded(path.name, exclude):
            (listing.images if is_image_file(path) else listing.not_images).append(path)
    # `**` matches a folder and its files (listed twice), and follows links: a
    # loop would give one folder's files again and again under longer paths.
    listing.images, listing.not_images = _once_each(listing.images), _once_each(listing.not_images)
    return listing


def _once_each(paths: Iterable[Path]) -> list[Path]:
    unique: dict[tuple[str, str], Path] = {}
    for path in sorted(paths, key=lambda p: (len(p.parts), p.parts)):   # the shortest path to a file wins
        unique.setdefault((os.path.realpath(path.parent), path.name), path)
    return sorted(unique.values(), key=lambda p: p.parts)


def find_image_files(inputs: Sequence[str | Path], exclude: Sequence[str] = DEFAULT_EXCLUDE,
                     recursive: bool = True) -> list[Path]:
    """Files as given; the images of each folder (with its subfolders) and of each glob pattern.

    A folder or pattern without images raises NoImagesFound naming it and
    what it holds instead. A file path that does not exist, or is not an
    image, is kept: reading it reports it, and the other images are still
    answered. Files left out (not images) and links not followed are said in
    one warning each.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            listing = list_image_files(path, recursive, exclude)
        elif path.is_file() or path.is_symlink() or not (_GLOB_CHARS & set(str(item))):
            found.append(path)
            continue
        else:
            listing = _expand_pattern(str(item), exclude, recursive)
        if not listing.images:
            raise NoImagesFound(_nothing_found(item, listing))
        listing.warn(str(item), stacklevel=2)
        found.extend(listing.images)
    return found


def _nothing_found(item, listing: ImageListing) -> str:
    message = f"no images found at {item}"
    held = [listing.describe_not_images()] if listing.not_images else []
    held += listing.problems[:3]
    if held:
        return f"{message}: it holds {'; '.join(held)}"
    return f"{message} (an image is any file Pillow reads: JPEG, PNG, BMP, TIFF, WebP...)"
