"""What the per-user cache holds, and clearing it without breaking a run that uses it.

The cache (`config.user_cache_dir`) only grows: decoded image arrays
(`images/`), a frozen trunk's activations (`trunk-activations/`, 1.5 GB
per recipe variant on HAM10000) and ONNX exports of checkpoints (`onnx/`).
Every entry is rebuilt when missing, so any of it can go; what must not go
is an entry a running job holds: a trunk cache or an export being written
holds its `.lock` file (fcntl), and a temp file younger than an hour may be
written right now. Each cache marks an entry's modification time when it
is read (`mark_used`), so "unused for N days" means what it says.

Files are grouped into entries by each kind's main file and its companions
(a trunk cache's `.done.npy` table and `.lock`); a file no main file claims
(a lock or temp file a killed run left) is an entry of its own.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .config import user_cache_dir

# Folder name -> (suffix of an entry's main file, suffixes of its companions), as each cache writes them
# (data/cache.py, training/frozen_trunk.py, inference/export_cache.py).
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "images": (".npy", (".issues.json",)),
    "trunk-activations": (".npy", (".done.npy", ".lock")),
    "onnx": (".onnx", (".lock",)),
}
TEMP_GRACE_S = 3600.0   # a temp file untouched this long is a stopped run's, not one being written
DAY_S = 86_400.0


def mark_used(path: Path) -> None:
    """Set `path`'s modification time to now: the cache's record of when an entry was last read."""
    with contextlib.suppress(OSError):   # a read-only or shared cache still serves its entries
        os.utime(path)


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    name: str                      # the main file's name, or the stray file's
    files: tuple[Path, ...]
    size: int                      # bytes on disk (a trunk cache is a sparse file: what it really takes)
    last_used: float               # the newest modification time of its files
    stray: bool = False            # a lock or temp file without its main file

    @classmethod
    def of(cls, kind: str, files: list[Path], stray: bool = False) -> "CacheEntry":
        stats = [path.stat() for path in files]
        return cls(kind, files[0].name, tuple(files), sum(stat.st_blocks * 512 for stat in stats),
                   max(stat.st_mtime for stat in stats), stray)

    @property
    def lock_file(self) -> Path | None:
        return next((path for path in self.files if path.name.endswith(".lock")), None)


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """Every entry of the cache kinds in `root` (default: the per-user cache), by kind then name."""
    root = Path(root) if root is not None else user_cache_dir()
    entries = []
    for kind, (main_suffix, companions) in KINDS.items():
        folder = root / kind
        if not folder.is_dir():
            continue
        files = sorted(path for path in folder.iterdir() if path.is_file())
        mains = [path for path in files if path.name.endswith(main_suffix) and not path.name.startswith(".")
                 and not any(path.name.endswith(suffix) for suffix in companions)]
        claimed = set()
        for main in mains:
            stem = main.name[:-len(main_suffix)]
            together = [main] + [folder / f"{stem}{suffix}" for suffix in companions
                                 if (folder / f"{stem}{suffix}").is_file()]
            claimed.update(together)
            entries.append(_entry(kind, together))
        entries += [_entry(kind, [path], stray=True) for path in files if path not in claimed]
    return [entry for entry in entries if entry is not None]


def _entry(kind: str, files: list[Path], stray: bool = False) -> CacheEntry | None:
    try:
        return CacheEntry.of(kind, files, stray)
    except FileNotFoundError:   # removed meanwhile by a job or another clear
        return None


@contextlib.contextmanager
def _unless_in_use(entry: CacheEntry, now: float) -> Iterator[bool]:
    """Yields False while a job holds the entry (its lock, or a temp file still being written)."""
    if entry.stray and entry.name.endswith(".tmp") and now - entry.last_used < TEMP_GRACE_S:
        yield False
        return
    lock_path = entry.lock_file
    if lock_path is None:
        yield True
        return
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True   # held while the files go: no job starts on the entry meanwhile
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def unused_for(entries: list[CacheEntry], days: float, now: float | None = None) -> list[CacheEntry]:
    """The entries no job has read for `days` days."""
    now = time.time() if now is None else now
    return [entry for entry in entries if now - entry.last_used >= days * DAY_S]


def clear_cache(entries: list[CacheEntry], now: float | None = None) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """Delete `entries` that no job holds. Returns (removed, in_use).

    The lock file goes last, so a job that waited on it finds no
    half-deleted entry: it rebuilds the whole of it.
    """
    now = time.time() if now is None else now
    removed, in_use = [], []
    for entry in entries:
        with _unless_in_use(entry, now) as free:
            if not free:
                in_use.append(entry)
                continue
            for path in sorted(entry.files, key=lambda p: p.name.endswith(".lock")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(entry)
    return removed, in_use
