"""The one entry point of `dermalens train`: one model, or K fold models (training.folds), fresh or resumed."""
from __future__ import annotations

from pathlib import Path

from ..run_folder import RunFolder
from .cross_validation import CrossValidationResult, format_cross_validation, train_folds
from .run import TrainResult, train


def run_training(config: dict | None = None, run_dir: Path | None = None, resume: bool = False,
                 overrides: list[str] | None = None, progress: bool = True) -> TrainResult | CrossValidationResult:
    """A new run from `config`, or (resume) the run in `run_dir` from its saved config plus `overrides`."""
    if resume:
        folder = RunFolder(run_dir)
        config = folder.read_config(overrides)
        if config["training"]["folds"] > 1:
            return train_folds(config, folder.path, resume=True, progress=progress)
        return train(config, folder.check_resumable(), resume=True, progress=progress)
    if config["training"]["folds"] > 1:
        return train_folds(config, run_dir, progress=progress)
    return train(config, run_dir, progress=progress)


__all__ = ["format_cross_validation", "run_training"]
