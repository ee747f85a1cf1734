"""Checkpoint files written crash-safely and read without running code: a Lightning CheckpointIO.

Lightning's own `TorchCheckpointIO` serialises into memory and lets fsspec
write the file through a temp file in $TMPDIR, then moves it; with $TMPDIR on
another filesystem (a tmpfs /tmp) that move is a copy, so a kill -9 during it
leaves a truncated `last.ckpt`, the previous good one already gone, and the
temp file behind. Nothing is fsynced. Here the checkpoint is streamed into a
temp file in the target's own folder, fsynced, and renamed over the target
(one atomic step on one filesystem), then the folder is fsynced. Readers see
the old checkpoint or the new one, never a part of one.

Temp files carry this module's own naming (`.<name>.<random>.ckpt-partial`);
ones left by a killed process are removed the next time a folder is written
to or read from, and said in the log. Files of other names are never touched.

Loading (`trainer.fit(ckpt_path=...)`, resume) goes through
`models.checkpoint.load_checkpoint_dict`: weights_only=True, and full
unpickling only with DERMALENS_TRUST_CHECKPOINTS=1 (or `weights_only=False`
passed to Lightning explicitly).
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ..atomic_io import fsync_directory
from ..models.checkpoint import load_checkpoint_dict

log = logging.getLogger(__name__)
TEMP_SUFFIX = ".ckpt-partial"


def temp_path_for(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"


def _is_our_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX) and path.is_file()


def remove_orphaned_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete this module's temp files in `folder` (left by a killed write); returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if _is_our_temp(path):
            try:
                size = path.stat().st_size
                path.unlink()
            except OSError as error:   # gone meanwhile, or not ours to delete: say so and go on
                log.warning("could not remove the partial checkpoint %s: %s", path, error)
                continue
            removed.append(path)
            log.warning("removed %s (%.1f MB), a checkpoint write that never finished (the process was killed)",
                        path, size / 1e6)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with a temp file beside the target, fsync and rename; safe loading."""

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def _clean_once(self, folder: Path) -> None:
        folder = folder.resolve()
        if folder not in self._cleaned:
            self._cleaned.add(folder)
            remove_orphaned_temp_files(folder)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._clean_once(path.parent)
        temp = temp_path_for(path)
        # "x": a new file, its mode left to the user's umask (mkstemp would make it private).
        handle = open(temp, "xb")
        try:
            with handle:
                torch.save(checkpoint, handle)   # streamed: no second copy of a large checkpoint in memory
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except (RuntimeError, OSError) as error:
            temp.unlink(missing_ok=True)
            # torch.save reports a full disk as "[enforce fail at inline_container.cc] unexpected pos": say
            # which file and how much room is left.
            free = shutil.disk_usage(path.parent).free
            raise OSError(f"could not write the checkpoint {path} ({free / 1e6:.0f} MB free there; a full disk?): "
                          f"{str(error).splitlines()[0]}") from error
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_directory(path.parent)

    def load_checkpoint(self, path, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        self._clean_once(path.parent)
        # weights_only handed to Lightning is the caller's explicit choice; None leaves it to the environment.
        trust = None if weights_only is None else not weights_only
        return load_checkpoint_dict(path, trust=trust, map_location=map_location)
