"""Options several subcommands share, worded once."""
from __future__ import annotations

import argparse
import os
from dataclasses import fields
from pathlib import Path

from ..atomic_io import open_stream_descriptor
from ..config import DATASET_FORMATS


def setting_choices(section_class: type, name: str) -> tuple:
    """The allowed values of a config setting, as its dataclass declares them."""
    return next(f.metadata["choices"] for f in fields(section_class) if f.name == name)


def add_data_options(parser, required: bool = False) -> None:
    parser.add_argument("--data", required=required, help="dataset path (default: $DERMALENS_DATA)")
    parser.add_argument("--format", choices=DATASET_FORMATS,
                        help="dataset layout (default: the config's data.format; auto detects it from the path)")


def add_set_option(parser, example: str = "training.max_epochs=3", what: str = "override") -> None:
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help=f"{what}, e.g. {example}")


def whole_number_at_least(minimum: int):
    """argparse type: a whole number of at least `minimum`, refused at parse time, before any work."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


# A count of at least 1 (0 or less was taken as "the default" or failed later).
positive_int = whole_number_at_least(1)


def check_output_file(path: str | None, option: str) -> None:
    """ValueError naming `option` when `path` cannot be written as a file, found before the work rather
    than after it (a folder given for a file, a parent that is a file, a parent folder one may not write)."""
    if not path:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{option} {path} is a folder: give a file name")
    if open_stream_descriptor(target) is not None:
        return   # this process's stdout or another open stream (atomic_io writes to it)
    if target.exists() and not target.is_file():   # a device or a pipe: written into, not replaced
        if not os.access(target, os.W_OK):
            raise ValueError(f"{option} {path}: no permission to write to it")
        return
    if target.is_symlink():   # written through: the file it names is replaced, in the folder holding that
        target = Path(os.path.realpath(target))
    _check_parent(target, option, path)


def check_output_folder(path: str | None, option: str) -> None:
    """As `check_output_file`, for an output folder: refused when it is an existing file."""
    if not path:
        return
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder")
    if target.is_dir() and not os.access(target, os.W_OK | os.X_OK):   # found only after the work, before
        raise ValueError(f"{option} {path}: no permission to write in {target}")
    _check_parent(target, option, path)


def _check_parent(target: Path, option: str, path: str) -> None:
    parent = next((p for p in [target.parent, *target.parent.parents] if p.exists()), None)
    if parent is None:
        return
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: no permission to write in {parent}")


def is_global_zero() -> bool:
    """Whether this is the first (or only) process of a training: under DDP every process finishes the command,
    and only the first prints its summary (Lightning's rank, as torchrun or Lightning's own launcher set it)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only  # imported by the training already

    return getattr(rank_zero_only, "rank", 0) == 0
