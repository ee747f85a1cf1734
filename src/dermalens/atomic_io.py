"""Crash-safe file writes: write a temp file beside the target, fsync it, then
os.replace it over the target. Readers see the old file or the new one, never
a half-written one, even if the process dies mid-write.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "file_sha256", "fsync_directory",
           "new_temp_file", "process_alive", "remove_dead_writers_files", "to_jsonable", "user_mode", "writer_gone",
           "writer_tag"]
log = logging.getLogger(__name__)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename in `directory` durable (POSIX); directories cannot be opened this way on Windows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (a writer whose temp files must be left alone)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):   # another user's process, or a system without signal 0
        return True
    return True


# A temp file's writer in its name: "<host>-<pid>" (writer_tag). On a cache shared by several machines (NFS)
# only this machine's processes can be asked whether they still run; another machine's file goes by its age.
WRITER = r"(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)"
FOREIGN_WRITER_AGE_S = 3600.0


def writer_tag() -> str:
    """This process as a temp file's name names its writer (see WRITER)."""
    return f"{re.sub(r'[^A-Za-z0-9-]', '-', socket.gethostname())[:40] or 'host'}-{os.getpid()}"


def writer_gone(match: "re.Match[str]", path: Path, foreign_age: float = FOREIGN_WRITER_AGE_S) -> bool:
    """Whether the writer a WRITER match names has stopped: its process is gone (this machine), or its file has
    not changed for `foreign_age` seconds (another machine's, or a name from a version that named no writer)."""
    if match.group("pid") is not None and match.group("host") == writer_tag().rsplit("-", 1)[0]:
        return not process_alive(int(match.group("pid")))
    try:
        return time.time() - path.lstat().st_mtime > foreign_age
    except OSError:
        return False


def remove_dead_writers_files(folder: Path, pattern: "re.Pattern[str]", what: str,
                              foreign_age: float = FOREIGN_WRITER_AGE_S) -> list[Path]:
    """Remove the files and folders of `folder` whose names match `pattern` (holding WRITER, perhaps optional)
    and whose writer has stopped (writer_gone), saying each in the log: what a killed `what` left behind."""
    removed = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        match = pattern.fullmatch(path.name)
        if match is None or not writer_gone(match, path, foreign_age):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:   # another process cleaned it up meanwhile
            continue
        except OSError as error:
            log.warning("could not remove %s, left by an earlier %s that was stopped: %s", path, what, error)
            continue
        removed.append(path)
        log.warning("removed %s, left by an earlier %s that was stopped", path, what)
    return removed


def user_mode(directory: bool = False) -> int:
    """The mode a plain open() (0666) or mkdir() (0777) gives under the user's umask: for files made through
    mkstemp/mkdtemp (0600/0700) that are meant to be as shared as the user's other files, no more."""
    try:   # Linux states the umask without changing it
        with open("/proc/self/status") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)   # elsewhere: read by setting it, then put back at once
        os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def new_temp_file(directory: Path, prefix: str, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new, empty file with a random name in `directory`, opened for writing: (fd, path).

    Unlike mkstemp (always 0600) its mode is 0666 less the user's umask, what
    a plain open() gives: a report written here is as readable as any other
    file the user makes, no more (umask 077 keeps it private), no less.
    """
    for _ in range(100):
        path = directory / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {directory}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` crash-safely; through a symlink, into its target (the link stays). Returns `path`.

    Only a regular file can be replaced by a rename. A process's own stream
    (`-o /dev/stdout`, /dev/fd/N) is written to its open descriptor, where the
    shell put it (a pipe, a terminal, a file opened for appending); a device,
    pipe or socket is written into, as a plain open() would; neither is
    replaced by a file of that name.
    """
    given = path = Path(path)
    descriptor = open_stream_descriptor(path)
    if descriptor is not None:
        write_to_descriptor(descriptor, data)
        return given
    try:
        target_mode = os.stat(path).st_mode   # follows symlinks
    except (FileNotFoundError, NotADirectoryError):
        target_mode = None
    if target_mode is not None and not stat.S_ISREG(target_mode) and not stat.S_ISDIR(target_mode):
        with open(path, "wb") as handle:
            handle.write(data)
        return given
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target: os.replace is only atomic within a filesystem.
    fd, temp = new_temp_file(path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return given


STREAM_NAMES = {"/dev/stdout": 1, "/dev/stderr": 2}
DESCRIPTOR_PATH = re.compile(r"/(?:dev/fd|proc/self/fd|proc/(?P<pid>\d+)/fd)/(?P<fd>\d+)")


def open_stream_descriptor(path: Path) -> int | None:
    """The descriptor of this process that `path` names (/dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N),
    when it is open; None for any other path. Reopening such a path would truncate a file the shell opened for
    appending (`>> log`), and renaming over it would replace the link."""
    text = os.path.normpath(os.fspath(path))
    descriptor = STREAM_NAMES.get(text)
    if descriptor is None:
        match = DESCRIPTOR_PATH.fullmatch(text)
        if match is None or (match.group("pid") and int(match.group("pid")) != os.getpid()):
            return None
        descriptor = int(match.group("fd"))
    try:
        os.fstat(descriptor)
    except OSError:
        return None
    return descriptor


def write_to_descriptor(descriptor: int, data: bytes) -> None:
    """All of `data` to an open descriptor, after what Python's own streams still hold for it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and stream.fileno() == descriptor:
                stream.flush()
        except (OSError, ValueError, AttributeError):   # a replaced or closed stream (pytest's capture)
            continue
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Plain-Python copy of obj: numpy scalars/arrays, paths and NaN made JSON-safe."""
    if isinstance(obj, dict):
        return {str(key): to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None  # JSON has no NaN/Infinity; null is what readers expect
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    # Serialise fully before touching the disk, so an unserialisable object
    # raises without leaving anything behind. allow_nan=False because NaN is
    # not valid JSON and would break strict readers.
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (checkpoints and exports are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
