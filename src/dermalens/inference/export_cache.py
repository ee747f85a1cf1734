"""The ONNX export of a checkpoint, made once and kept in the per-user cache.

ONNX Runtime runs our models about twice as fast as eager PyTorch on a CPU
(docs/performance.md), so `predict`, `serve`, `evaluate` and the evaluation
after training use it by default (`load.load_predictor`, runtime "auto").
The export is written into the per-user cache, never beside the checkpoint
(evaluation changes nothing in a run folder), under the checkpoint's sha256:
a changed or retrained checkpoint gets a new export, an unchanged one is
exported once. Every export is parity-checked against PyTorch before it is
kept (`export.export_model`). The calibration (temperature, TTA, decision
rule) is always read from the checkpoint's own record, not from the export.
"""
from __future__ import annotations

import fcntl
import logging
import warnings
from pathlib import Path

from .. import __version__
from ..atomic_io import file_sha256
from ..config import CACHE_VARIABLE, user_cache_dir
from ..user_cache import mark_used

log = logging.getLogger(__name__)
CACHE_FOLDER = "onnx"


def export_cache_dir() -> Path:
    return user_cache_dir() / CACHE_FOLDER


def cached_export_path(checkpoint: Path, digest: str | None = None) -> Path:
    digest = digest or file_sha256(checkpoint)
    # By content alone: a copied or renamed checkpoint reuses its export.
    return export_cache_dir() / f"{digest[:24]}-dermalens{__version__}.onnx"


class ExportUnavailable(RuntimeError):
    """The checkpoint could not be run through ONNX Runtime here; the message says why in one line."""


def unusable_cache(folder: Path, error: OSError) -> str:
    return (f"the per-user cache folder {folder} cannot hold the ONNX export ({error}); set {CACHE_VARIABLE} "
            f"to a writable folder")


def cached_export(checkpoint: str | Path) -> Path:
    """The parity-checked ONNX export of `checkpoint`, from the cache or made now (once, under a lock)."""
    checkpoint = Path(checkpoint)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ExportUnavailable("onnxruntime is not installed") from None
    path = cached_export_path(checkpoint)
    if path.is_file():
        mark_used(path)   # `dermalens cache --older-than` goes by last use
        return path
    from ..models.calibration_record import CheckpointError, check_checkpoint_file

    check_checkpoint_file(checkpoint)   # a damaged file is named, not announced as being exported (nor locked)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a+")
    except OSError as error:   # under a file, read-only or full: PyTorch still runs the model ("auto")
        raise ExportUnavailable(unusable_cache(path.parent, error)) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # two processes starting on one checkpoint export it once
        try:
            if path.is_file():
                return path
            from .export import ExportError, export_checkpoint

            # Said, since the first prediction with a new model then takes a minute or more.
            log.warning("first use of %s: exporting it to ONNX once for ONNX Runtime (kept in %s)", checkpoint,
                        path.parent)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    export_checkpoint(checkpoint, path, exporter="torchscript")
                for message in dict.fromkeys(str(warning.message) for warning in caught):
                    log.warning("ONNX export: %s", message)   # e.g. parity on random images: no real ones at hand
            except CheckpointError:
                raise   # not a model at all: PyTorch cannot run it either, so this is the answer, not a fallback
            except OSError as error:   # the export is written into the cache: a full disk ends here
                raise ExportUnavailable(unusable_cache(path.parent, error)) from None
            except (ExportError, RuntimeError, ValueError) as error:
                raise ExportUnavailable(f"the ONNX export failed ({str(error).splitlines()[0]})") from None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path
