"""The one entry point of `dermalens train`: one model, or K fold models (training.folds), fresh or resumed."""
from __future__ import annotations

import contextlib
from pathlib import Path

import yaml

from ..config import ConfigError, flat_settings, recipe_differences
from ..data.prepare import data_differences
from ..run_folder import RunFolder
from .cross_validation import CrossValidationResult, format_cross_validation, train_folds
from .run import TrainResult, train

# What `--resume` may change: where the data and caches are (and whether items it cannot use, such as a
# class folder added since, are skipped: the run's class set and split.csv still decide what it reads), how
# long and on what the run goes on, how it is evaluated, and what a finished cross-validated run ships (its
# ensemble, or a student distilled from its fold models). Anything else would continue a model under another
# recipe, class set or split: the saved checkpoint would not fit it, or would fit it silently wrong.
RESUMABLE_CHANGES = ("data.path", "data.cache_dir", "data.on_bad_data", "output.", "evaluation.",
                     "training.max_epochs", "training.max_time", "training.num_workers", "training.progress_bar", "training.eval_batch_size",
                     "training.log_every_n_steps", "training.checkpoint_every_n_steps", "training.accelerator",
                     "training.devices", "training.strategy", "training.num_nodes", "training.limit_train_batches",
                     "training.limit_val_batches", "training.ensemble", "training.student",
                     "training.distillation_weight", "training.distillation_temperature")


def check_resume_changes(saved: dict, config: dict, run_dir: Path) -> None:
    """ConfigError naming each setting a resume may not change, with the run's value and the new one;
    checked before anything of the run folder is rewritten."""
    before, after = flat_settings(saved), flat_settings(config)
    refused = [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
               if before.get(key) != after.get(key)
               and not any(key == allowed or (allowed.endswith(".") and key.startswith(allowed))
                           for allowed in RESUMABLE_CHANGES)]
    if refused:
        raise ConfigError(f"--resume {run_dir} cannot change what its model was trained as: {'; '.join(refused)}. "
                          f"Start a new run (another --run-dir) for these settings")


def folder_settings_differences(folder: Path, config: dict, extra_keys: tuple[str, ...] = (),
                                ignore_unrecorded: bool = True) -> list[str]:
    """How the run folder's config.yaml differs from `config` in recipe, `extra_keys` and data ([] when the
    folder has no config yet): the research scripts reuse or resume a folder only when this is empty, so that
    results of another command writing to the same output are never passed off as this one's."""
    config_file = RunFolder(folder).config_file
    if not config_file.is_file():
        return []
    recorded = yaml.safe_load(config_file.read_text())
    return recipe_differences(recorded, config, extra_keys=extra_keys, ignore_unrecorded=ignore_unrecorded) \
        + data_differences(recorded, config)


def run_training(config: dict | None = None, run_dir: Path | None = None, resume: bool = False,
                 overrides: list[str] | None = None, progress: bool = True,
                 settings: dict | None = None) -> TrainResult | CrossValidationResult:
    """A new run from `config`, or (resume) the run in `run_dir` from its saved config plus `overrides` and
    `settings` (values taken as written: {"data": {"path": ...}})."""
    if resume:
        folder = RunFolder(run_dir)
        config = folder.read_config(overrides, settings)
        check_resume_changes(folder.read_config(), config, folder.path)
        with folder.training_lock():
            if config["training"]["folds"] > 1:
                return train_folds(config, folder.path, resume=True, progress=progress)
            return train(config, folder.check_resumable(), resume=True, progress=progress)
    # A new folder (no --run-dir) is one no other training knows of; a named one is locked while trained.
    with RunFolder(run_dir).training_lock() if run_dir else contextlib.nullcontext():
        if config["training"]["folds"] > 1:
            return train_folds(config, run_dir, progress=progress)
        return train(config, run_dir, progress=progress)


__all__ = ["format_cross_validation", "run_training"]
