"""Where a package is written: built in a folder beside its target and swapped in whole.

`staged_folder` gives the folder to write into; when the block succeeds it
becomes the target, in one atomic step where the system allows (a swap of
the two directories on Linux), so a kill at any moment leaves the previous
package or the new one. `--overwrite` replaces only an earlier dermalens
package, never the run folder or a folder that holds it. What a killed
`package` left behind is cleaned up by the next one (`remove_stale_staging`).
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Iterator

from ..atomic_io import WRITER, fsync_directory, process_alive, writer_gone, writer_tag
from .package_reader import CONFIG_FILE, PACKAGE_FORMAT, PackageError, is_dermalens_package

__all__ = ["check_replaceable", "remove_stale_staging", "staged_folder"]

log = logging.getLogger(__name__)


def _fsync_folder(folder: Path) -> None:
    # The rename that publishes the folder must not reach the disk before its files do.
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    fsync_directory(folder)


# --------------------------------------------------------------------------- the swap

STAGING_SUFFIX = ".tmp"      # .<name>.<host>-<pid>.<random>.tmp: a package being built beside <name> by that process
ASIDE_SUFFIX = ".old"        # .<name>.<host>-<pid>.<random>.old: the package it replaced, until it is removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or filesystem cannot. os.rename cannot replace a non-empty directory, and two renames
    leave a moment with no folder at all; Python has no call for the swap, hence ctypes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):   # a C library without it (glibc < 2.28, musl < 1.2.4)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (22, 38, 95):   # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem or kernel cannot swap
        return False
    raise OSError(error, os.strerror(error), str(a), None, str(b))


def _leftover_pattern(out: Path, suffix: str) -> "re.Pattern[str]":
    # ".<name>.<host>-<pid>.<hex><suffix>"; earlier versions wrote the pid alone.
    return re.compile(re.escape(f".{out.name}.") + rf"(?:{WRITER}|(?P<old_pid>\d+))\.[0-9a-f]+" + re.escape(suffix))


def _own_leftovers(out: Path, suffix: str) -> list[Path]:
    pattern = _leftover_pattern(out, suffix)
    # A link is listed as itself (a swap through a symlinked --out sets the link aside), never followed.
    return sorted(p for p in out.parent.iterdir() if pattern.fullmatch(p.name) and (p.is_symlink() or p.is_dir()))


def _writer_alive(folder: Path, out: Path, suffix: str) -> bool:
    """Whether the `package` that made a staging folder may still be writing it: its process runs (this machine),
    or, made on another machine sharing the disk, it changed within the hour."""
    match = _leftover_pattern(out, suffix).fullmatch(folder.name)
    if match.group("old_pid") is not None:
        return process_alive(int(match.group("old_pid")))
    return not writer_gone(match, folder)


def _remove(path: Path) -> bool:
    """Remove a leftover folder, or a link without following it; False (and a log line) when it stays."""
    try:
        if path.is_symlink():
            path.unlink()
        else:
            shutil.rmtree(path)
    except OSError as error:
        log.warning("could not remove %s: %s", path, error)
        return False
    return True


def remove_stale_staging(out: Path) -> list[Path]:
    """Clean up what a killed `package` left beside `out`; returns what was removed.

    Only folders of this module's naming whose process no longer runs are
    touched: a package set aside by a swap that did not finish is put back
    when `out` is missing (it is still complete), else removed; a staging
    folder is removed. Each is said in the log; one whose process still runs
    (a `package` writing now) is left alone.
    """
    out = Path(out)
    if not out.parent.is_dir():
        return []
    removed = []
    for aside in _own_leftovers(out, ASIDE_SUFFIX):
        if _writer_alive(aside, out, ASIDE_SUFFIX):
            continue
        kept = aside / out.name
        if not aside.is_symlink() and not out.exists() and is_dermalens_package(kept):
            os.replace(kept, out)
            log.warning("%s was missing after an interrupted `package`: the previous package, set aside in %s, "
                        "is back in place", out, aside)
        if _remove(aside):
            removed.append(aside)
    for staging in _own_leftovers(out, STAGING_SUFFIX):
        if _writer_alive(staging, out, STAGING_SUFFIX):
            log.warning("%s belongs to a `package` that is still running; left in place", staging)
            continue
        if _remove(staging):
            removed.append(staging)
            log.warning("removed %s, left by an earlier `package` that was stopped", staging)
    return removed


def check_replaceable(out: Path, protected: list[Path]) -> None:
    """PackageError unless `out` may be replaced: an existing dermalens package that is neither one of
    the `protected` folders (the run) nor a folder that holds one of them."""
    target = out.resolve()
    for folder in protected:
        folder = Path(folder).resolve()
        if target == folder or target in folder.parents:
            raise PackageError(f"--out {out} is {'the run folder' if target == folder else 'a folder that holds'} "
                               f"{folder}; --overwrite would delete the run's checkpoints: choose another --out")
    if not out.is_dir() or not is_dermalens_package(out):
        raise PackageError(f"{out} exists and is not a dermalens model package (no {CONFIG_FILE} of format "
                           f"{PACKAGE_FORMAT}); --overwrite only replaces an earlier package: choose another --out "
                           f"or remove it yourself")


@contextlib.contextmanager
def staged_folder(out: Path, overwrite: bool = False, protected: list[Path] = ()) -> Iterator[Path]:
    """A temporary folder beside `out` that becomes `out` only if the block succeeds.

    A failure anywhere (export parity, a path check, Ctrl+C) removes it, so
    `out` is either the complete package or untouched. With overwrite, an
    existing `out` must be a dermalens package and none of `protected` (nor
    hold one of them); it is swapped with the new one in one atomic step
    where the system allows (Linux), so a kill at any moment leaves the old
    package or the new one in place. Elsewhere it is moved aside first, and a
    kill between the two renames leaves it in `.<name>.<random>.old/`, which
    the next `package` to the same place puts back. Leftovers of a killed
    `package` are cleaned up first (`remove_stale_staging`).

    The folder and its files get the user's umask, as anything else they
    write (a shared package is made readable by a umask of 022, the usual one).
    """
    out = Path(out)
    if out.is_symlink():   # the package goes where the link points; the link stays a link
        out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    if out.exists():
        if not overwrite:
            raise PackageError(f"{out} already exists; choose another --out or pass --overwrite")
        check_replaceable(out, list(protected))
    staging = _new_folder(out, STAGING_SUFFIX)
    try:
        yield staging
        _fsync_folder(staging)
        if not out.exists():
            os.replace(staging, out)
        elif _exchange(staging, out):
            _remove(staging)   # now the old package
        else:
            aside = _new_folder(out, ASIDE_SUFFIX)
            os.replace(out, aside / out.name)
            try:
                os.replace(staging, out)
            except BaseException:
                os.replace(aside / out.name, out)   # the old package back where it was
                aside.rmdir()
                raise
            shutil.rmtree(aside, ignore_errors=True)
        fsync_directory(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _new_folder(out: Path, suffix: str) -> Path:
    """.<name>.<host>-<pid>.<random><suffix> beside `out`; created with mode 0777 less the umask (mkdtemp: 0700)."""
    for _ in range(100):
        folder = out.parent / f".{out.name}.{writer_tag()}.{os.urandom(6).hex()}{suffix}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise PackageError(f"no free temporary folder name beside {out}")
