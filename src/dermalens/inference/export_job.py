"""`dermalens export` as one call: int8 calibration images chosen, the export made, its result described."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

from ..classes import RESEARCH_DISCLAIMER
from ..run_folder import RunFolder
from .settings import DEFAULT_CALIBRATION_COUNT, DEFAULT_QUANTIZE_METHOD


def calibration_images(checkpoint: Path, patterns: Sequence[str] | None,
                       count: int = DEFAULT_CALIBRATION_COUNT):
    """int8 calibration images: given files, else the training split of the run the checkpoint belongs to.

    None when neither is there (the export then warns and calibrates on its parity images).
    """
    import numpy as np

    from .export import expand_image_paths
    from .prediction import read_rgb_image

    if patterns:
        paths = expand_image_paths(patterns)[:count]
        return [read_rgb_image(p) for p in paths]
    run = RunFolder(Path(checkpoint).resolve().parent.parent)   # RUN/checkpoints/<name>.ckpt
    if not run.is_run():
        return None
    from ..data.prepare import prepare_data

    run_dir = run.path
    try:
        prepared = prepare_data(run.read_config(), run_dir, progress=False)
    except (ValueError, OSError) as error:  # data moved, relative path from elsewhere, ...
        warnings.warn(f"cannot read the training data of {run_dir} for int8 calibration ({error}); "
                      f"give --calibration-images", stacklevel=2)
        return None
    rows = np.flatnonzero(prepared.split == "train")
    rows = np.random.default_rng(0).choice(rows, min(count, len(rows)), replace=False)
    return [np.asarray(prepared.images[r]) for r in np.sort(rows)]


def export_with_calibration(checkpoint: str | Path, out: str | Path | None = None, *, quantize: str | None = None,
                            quantize_method: str = DEFAULT_QUANTIZE_METHOD,
                            calibration_patterns: Sequence[str] | None = None,
                            calibration_count: int = DEFAULT_CALIBRATION_COUNT, **options):
    """`export_checkpoint` (options as for it), with static int8 calibrated on `calibration_images`."""
    from .export import export_checkpoint
    from .model_files import check_model_path

    checkpoint = check_model_path(checkpoint)
    calibration = None
    if quantize == "int8" and quantize_method == "static":
        calibration = calibration_images(Path(checkpoint), calibration_patterns, calibration_count)
    return export_checkpoint(checkpoint, out, quantize=quantize, quantize_method=quantize_method,
                             calibration_images=calibration, **options)


def describe_export(result) -> str:
    """What was written and how well it matches PyTorch, in a few lines (an `ExportResult`)."""
    parity = result.parity
    lines = [f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, {result.exporter} exporter, opset "
             f"{result.opset}, dynamic batch, {result.seconds:.0f} s)",
             f"parity vs PyTorch on {parity.n_images} {parity.source}: max |dp| = {parity.max_abs_diff:.1e} "
             f"(<= {parity.tolerance:.0e}), top class agrees on {parity.top1_agreement:.0%}"]
    if result.int8_parity:
        q = result.int8_parity
        lines.append(f"int8 ({result.quantization['method']}) vs PyTorch: max |dp| = {q.max_abs_diff:.1e}, top class "
                     f"agrees on {q.top1_agreement:.0%}; measure accuracy with benchmarks/quantization_accuracy.py")
    meta = result.metadata
    lines.append(f"metadata: {meta['backbone']} {meta['preprocessing'].image_size}px, classes "
                 f"{','.join(meta['classes'])}, temperature {meta['temperature']:.3f}, dermalens {meta['version']}")
    lines.append(RESEARCH_DISCLAIMER)
    return "\n".join(lines)
