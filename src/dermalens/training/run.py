"""How the loop runs: data preparation, the Lightning Trainer and its callbacks, a run folder.

A run folder holds everything needed to trust a result later:
config.yaml (resolved), split.csv, data_issues.csv (if any), checkpoints/
(best.ckpt, last.ckpt), logs/ (CSV and TensorBoard), and after evaluation
metrics.json, report.md and figures/.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ..classes import NUM_CLASSES
from ..config import ConfigError, dump_config, load_config
from ..data.cache import build_image_cache
from ..data.datamodule import LesionDataModule
from ..data.sources import LesionDataset, make_synthetic_dataset, open_dataset
from ..data.split import assert_no_lesion_leakage, official_or_grouped_split, read_split_csv, write_split_csv
from ..data.transforms import AugmentationConfig
from ..data.validation import BadDataError, write_issues_csv
from ..evaluation.report import atomic_write_text
from ..models.classifier import ModelConfig
from .distributed import shared_run_dir
from .module import LesionClassifierModule

log = logging.getLogger(__name__)
EXCLUDED = "excluded"  # split value of rows dropped as bad data


@dataclass
class PreparedData:
    dataset: LesionDataset
    images: np.ndarray          # (N, S, S, 3) uint8, aligned with dataset.records
    labels: np.ndarray
    split: np.ndarray           # 'train' | 'val' | 'test' | 'excluded'
    issues: list


def resolve_data_path(config: dict) -> Path | None:
    path = config["data"]["path"] or os.environ.get("DERMALENS_DATA")
    return Path(path).expanduser() if path else None


def load_dataset(config: dict) -> LesionDataset:
    data = config["data"]
    if data["format"] == "synthetic":
        return make_synthetic_dataset(n_per_class=data["synthetic_per_class"], size=max(64, config["model"]["image_size"]),
                                      seed=config["seed"])
    path = resolve_data_path(config)
    if path is None:
        raise ConfigError("no data given: pass --data PATH, set DERMALENS_DATA, or use --set data.format=synthetic")
    kwargs = {"restrict_to_available": data["restrict_to_available"]} if data["format"] in ("auto", "ham10000") else {}
    return open_dataset(path, data["format"], **kwargs)


def prepare_data(config: dict, run_dir: Path | None = None, progress: bool = True) -> PreparedData:
    """Read, check, cache and split the data before any training starts.

    Bad items are all found here (reading finds missing files, unknown
    labels, duplicates; caching decodes every image once). With
    on_bad_data=error the run stops with the whole list; with skip they are
    excluded and listed in data_issues.csv.
    """
    data_cfg = config["data"]
    dataset = load_dataset(config)
    cache_dir = Path(data_cfg["cache_dir"]) if data_cfg["cache_dir"] else None
    images, decode_issues = build_image_cache(dataset, config["model"]["image_size"], cache_dir, progress=progress)
    issues = list(dataset.issues) + list(decode_issues)
    if run_dir is not None and issues:
        write_issues_csv(issues, run_dir / "data_issues.csv")
    policy = data_cfg["on_bad_data"]
    if policy not in ("error", "skip"):
        raise ConfigError(f"data.on_bad_data must be 'error' or 'skip', got {policy!r}")
    if issues and policy == "error":
        raise BadDataError(issues)
    if issues:
        warnings.warn(f"skipping {len(issues)} bad data items (listed in data_issues.csv)", stacklevel=2)

    split_file = run_dir / "split.csv" if run_dir is not None else None
    if split_file is not None and split_file.is_file():
        # Resume / re-evaluate: the split is part of the run and never redrawn.
        saved = read_split_csv(split_file)
        split = dataset.records["image_id"].map(saved).fillna(EXCLUDED).to_numpy()
    else:
        split = official_or_grouped_split(dataset, data_cfg["val_fraction"], data_cfg["test_fraction"],
                                          config["seed"]).to_numpy().astype(object)
    bad_ids = {i.image_id for i in decode_issues}
    split = np.where(dataset.records["image_id"].isin(bad_ids), EXCLUDED, split)
    split_series = pd.Series(split, index=dataset.records.index)
    usable = split_series != EXCLUDED
    assert_no_lesion_leakage(dataset.records[usable], split_series[usable])
    if split_file is not None and not split_file.is_file():
        write_split_csv(dataset.records[usable], split_series[usable], split_file)
    return PreparedData(dataset, images, dataset.records["label"].to_numpy(np.int64), split, issues)


def new_run_dir(config: dict) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(config["output"]["runs_dir"]) / f"{config['name']}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def build_datamodule(config: dict, prepared: PreparedData, preprocessing) -> LesionDataModule:
    training = config["training"]
    return LesionDataModule(
        prepared.images, prepared.labels, prepared.split, preprocessing, AugmentationConfig(**config["augmentation"]),
        batch_size=training["batch_size"], eval_batch_size=training["eval_batch_size"],
        num_workers=training["num_workers"], balanced_sampling=config["sampler"]["balanced"],
        samples_per_class=config["sampler"]["samples_per_class"],
        balance_power=config["sampler"]["power"], seed=config["seed"],
        pin_memory=torch.cuda.is_available() and training["accelerator"] != "cpu",
    )


def build_trainer(config: dict, run_dir: Path) -> tuple[L.Trainer, ModelCheckpoint]:
    t = config["training"]
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor=t["monitor"], mode=t["monitor_mode"],
        save_top_k=1, save_last=True, auto_insert_metric_name=False,
    )
    callbacks = [
        checkpoint,
        EarlyStopping(monitor=t["monitor"], mode=t["monitor_mode"], patience=t["early_stopping_patience"]),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    if t["progress_bar"]:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    loggers = [CSVLogger(run_dir, name="logs", version="", flush_logs_every_n_steps=10), TensorBoardLogger(run_dir, name="logs", version="tensorboard")]
    trainer = L.Trainer(
        accelerator=t["accelerator"], devices=t["devices"], num_nodes=t["num_nodes"], strategy=t["strategy"],
        precision=t["precision"], max_epochs=t["max_epochs"], max_time=t["max_time"],
        limit_train_batches=t["limit_train_batches"], limit_val_batches=t["limit_val_batches"],
        log_every_n_steps=t["log_every_n_steps"], callbacks=callbacks, logger=loggers,
        enable_progress_bar=t["progress_bar"], enable_model_summary=False, deterministic=False,
        default_root_dir=run_dir,
    )
    return trainer, checkpoint


def set_aside_metrics_log(run_dir: Path) -> Path | None:
    """Lightning's CSVLogger deletes an existing metrics.csv; keep it to merge after resuming."""
    log_file = run_dir / "logs" / "metrics.csv"
    if not log_file.is_file():
        return None
    kept = run_dir / "logs" / "metrics.before-resume.csv"
    if kept.is_file():  # an earlier resume was interrupted too: fold it in first
        merge_metrics_logs(kept, log_file, resumed_step=None)
    log_file.replace(kept)
    return kept


def merge_metrics_logs(earlier: Path, current: Path, resumed_step: int | None) -> None:
    """earlier rows up to the resumed step + the new rows -> current (atomically); earlier is removed."""
    old = pd.read_csv(earlier)
    if resumed_step is not None and "step" in old:
        old = old[old["step"] <= resumed_step]
    new = pd.read_csv(current) if current.is_file() else pd.DataFrame()
    merged = pd.concat([old, new], ignore_index=True)
    atomic_write_text(current, merged.to_csv(index=False))
    earlier.unlink()


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    train_seconds: float
    metrics: dict | None = None


def train(config: dict, run_dir: Path | None = None, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume) one run; evaluate the best checkpoint on the test split once at the end."""
    L.seed_everything(config["seed"], workers=True, verbose=False)
    if resume:
        if run_dir is None or not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"cannot resume: {run_dir} has no config.yaml")
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise ConfigError(f"cannot resume: no checkpoint at {last}")
    else:
        run_dir = Path(run_dir) if run_dir else shared_run_dir(config, new_run_dir)  # one folder for all DDP ranks
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            # Never overwrite a trained model: continuing is an explicit choice.
            raise ConfigError(f"run folder {run_dir} already holds checkpoints; use --resume {run_dir} "
                              f"or choose another --run-dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(config))
    prepared = prepare_data(config, run_dir, progress=progress)
    counts = np.bincount(prepared.labels[prepared.split == "train"], minlength=NUM_CLASSES).tolist()
    module = LesionClassifierModule(
        model=asdict(ModelConfig(**config["model"])), loss=config["loss"], optimizer=config["optimizer"],
        scheduler=config["scheduler"], class_counts=counts, monitor=config["training"]["monitor"],
        monitor_mode=config["training"]["monitor_mode"], channels_last=config["training"]["channels_last"],
        compile=config["training"]["compile"],
    )
    log.info("backbone weights: %s", module.model.weights_source)
    datamodule = build_datamodule(config, prepared, module.model.preprocessing)
    earlier_log = set_aside_metrics_log(run_dir) if resume else None
    resumed_step = (torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
                    ["global_step"] if resume else None)
    trainer, checkpoint = build_trainer(config, run_dir)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(run_dir / "checkpoints" / "last.ckpt") if resume else None)
    seconds = time.perf_counter() - started
    if earlier_log is not None and trainer.is_global_zero:
        merge_metrics_logs(earlier_log, run_dir / "logs" / "metrics.csv", resumed_step=resumed_step)
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else run_dir / "checkpoints" / "last.ckpt"
    result = TrainResult(run_dir, best, run_dir / "checkpoints" / "last.ckpt", seconds)
    if config["evaluation"]["after_training"] and trainer.is_global_zero:
        from ..evaluation.evaluate import evaluate_checkpoint

        result.metrics = evaluate_checkpoint(config, best, run_dir, prepared=prepared, progress=progress,
                                             extra_context={"train_seconds": round(seconds, 1)})
    return result


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> dict:
    return load_config(run_dir / "config.yaml", overrides)
