"""How the loop runs: the Lightning Trainer and its callbacks, in a run folder.

A run folder is self-contained and relocatable: config.yaml (resolved, with
absolute data paths), split.csv, data_issues.csv (if any), status.json,
checkpoints/ (best.ckpt, last.ckpt), logs/ (CSV and TensorBoard), and after
evaluation metrics.json, report.md and figures/. Everything that can be
checked is checked before the folder is made, so a typo leaves nothing
behind; a run that fails later says so in status.json.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import io
import logging
import math
import shutil
import signal
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    Timer,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ..atomic_io import atomic_write_bytes, atomic_write_text
from ..config import (
    AugmentationSection,
    ConfigError,
    SamplerSection,
    TrainingSection,
    dump_config,
    section,
)
from ..data.datamodule import LesionDataModule
from ..data.prepare import PreparedData, prepare_data, resolve_cache_dir, resolve_data_path, save_run_data
from ..evaluation.evaluate import evaluate_checkpoint
from ..hardware import resolve_precision
from ..inference.load import load_predictor, logits_for_images
from ..models.calibration_record import calibration_path
from ..models.checkpoint import CHECKPOINT_KEY, loads_own_checkpoints, read_checkpoint_metadata
from ..models.classifier import check_backbone_name
from ..run_folder import LOGS, RunFolder
from .activation_data import ActivationDataModule
from .calibrate import calibrate
from .checkpoint_io import AtomicCheckpointIO
from .distributed import shared_run_dir
from .ema import EMAWithWarmup
from .errors import TrainingInterrupted
from .frozen_trunk import TrunkActivations, TrunkSpec
from .module import LesionClassifierModule

log = logging.getLogger(__name__)


def new_run_dir(config: dict) -> Path:
    """runs/<name>-<time> (not created here: the folder is made once the data checks pass)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(config["output"]["runs_dir"]).expanduser().resolve() / f"{config['name']}-{stamp}"


def member_config(config: dict, name: str, max_time: str | None) -> dict:
    """The config for one model trained inside a cross-validated run (a fold model or a student): a single run
    (no folds, no student of its own), not evaluated on its own, with its share of the job's budget."""
    member = copy.deepcopy(config)
    member["name"] = f"{config['name']}-{name}"
    member["training"].update(folds=1, student=False)
    member["evaluation"]["after_training"] = False
    if max_time is not None:
        member["training"]["max_time"] = max_time
    return member


def with_absolute_paths(config: dict) -> dict:
    """The config with data.path (and a cache folder) absolute, so the run works from any directory."""
    data = dict(config["data"])
    if data["format"] != "synthetic":
        path = resolve_data_path(config)
        if path is not None:
            if not path.exists():
                raise ConfigError(f"data path not found: {path} (data.path / --data / $DERMALENS_DATA)")
            data["path"] = str(path.resolve())
    if data["cache_dir"] not in (None, "", "auto", "none", "null"):
        data["cache_dir"] = str(Path(data["cache_dir"]).expanduser().resolve())
    return {**config, "data": data}


def build_datamodule(config: dict, prepared: PreparedData, module: LesionClassifierModule, progress: bool = True,
                     teacher_logits: np.ndarray | None = None):
    """Images through augmentation, or (frozen trunk with cached views) the trunk's cached activations;
    with teacher logits (one row per image), the training batches carry them for distillation."""
    training = section(TrainingSection, config["training"])
    preprocessing = module.model.preprocessing
    if config["sampler"]["source_power"] != 1 and prepared.sources is None:
        log.warning("sampler.source_power=%s does nothing here: the data names no image's source (HAM10000's "
                    "dataset column, or a source column in a folder's lesion_ids.csv)", config["sampler"]["source_power"])
    if module.inputs_are_trunk_activations:
        spec = TrunkSpec(training.freeze_stages, training.cached_views, config["seed"])
        activations = TrunkActivations(module.model, prepared.images, spec,
                                       section(AugmentationSection, config["augmentation"]),
                                       cache_dir=trunk_cache_dir(config), progress=progress)
        return ActivationDataModule(activations, prepared.labels, prepared.split,
                                    sampler=section(SamplerSection, config["sampler"]), training=training,
                                    seed=config["seed"], teacher_logits=teacher_logits, sources=prepared.sources)
    return LesionDataModule(
        prepared.images, prepared.labels, prepared.split, preprocessing,
        augmentation=section(AugmentationSection, config["augmentation"]),
        sampler=section(SamplerSection, config["sampler"]), training=training, seed=config["seed"],
        pin_memory=torch.cuda.is_available() and training.accelerator != "cpu", teacher_logits=teacher_logits,
        sources=prepared.sources,
    )


def trunk_cache_dir(config: dict) -> Path:
    """Beside the images in the per-user cache (data.cache_dir auto), inside a cache folder one names (never
    beside it: that would write into its parent); a private temporary folder when caching is off, removed when
    the process exits (left behind, it would keep the run's activations for good: about 1.5 GB for the recipe)."""
    images = resolve_cache_dir(config)
    if images is None:
        private = Path(tempfile.mkdtemp(prefix="dermalens-trunk-"))
        atexit.register(shutil.rmtree, private, ignore_errors=True)
        return private
    if config["data"]["cache_dir"] == "auto":
        return images.parent / "trunk-activations"
    return images / "trunk-activations"


class ReseedEachEpoch(Callback):
    """Every epoch's randomness (augmentation, dropout, worker seeds) is a function of (seed, epoch).

    Lightning restores weights, optimiser and scheduler on resume but not the
    Python/NumPy/torch random streams, so a resumed run would draw other
    augmentations than the uninterrupted one. Seeding per epoch makes epoch
    k the same whether or not the run stopped before it. (The class-balanced
    sampler already draws with seed + epoch.)
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # Distinct per rank too, as Lightning's own worker seeding is.
        L.seed_everything(self.seed * 100_003 + trainer.current_epoch * 1_009 + trainer.global_rank,
                          workers=True, verbose=False)
        datamodule = getattr(trainer, "datamodule", None)
        if hasattr(datamodule, "reseed_augmentation"):   # albumentations keeps its own generators
            datamodule.reseed_augmentation(trainer.current_epoch * 1_000 + trainer.global_rank)


class RunFolderCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that follows its run folder when the folder is moved or copied.

    Lightning keeps the absolute paths of best/last in the checkpoint; after
    `mv runs/A runs/B` it would no longer know the best score, and a worse
    epoch could overwrite best.ckpt. The saved paths are re-rooted in the
    folder being resumed.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        old = state_dict.get("dirpath")
        new = str(self.dirpath)
        if old and old != new:
            def move(path):
                return path.replace(old, new, 1) if isinstance(path, str) and path.startswith(old) else path

            state_dict = {**state_dict, "dirpath": new,
                          **{k: move(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path",
                                                                   "last_model_path") if k in state_dict},
                          "best_k_models": {move(k): v for k, v in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)


def build_trainer(config: dict, run_dir: Path,
                  extra_callbacks: Sequence[Callback] = ()) -> tuple[L.Trainer, ModelCheckpoint]:
    t = config["training"]
    folder = RunFolder(run_dir).checkpoints
    # Fixed names, never "-v1": a resumed or moved run keeps writing best.ckpt / last.ckpt.
    # Without a monitor, best.ckpt is the last epoch and the mode means nothing: a fixed one keeps its callback's
    # state key apart from last.ckpt's (with monitor None and mode "min" the two were the same, and Lightning
    # refused the run).
    best = RunFolderCheckpoint(dirpath=folder, filename="best", monitor=t["monitor"],
                               mode=t["monitor_mode"] if t["monitor"] else "max",
                               save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
    # last.ckpt after every epoch, improved or not: an interruption loses at most that; with
    # checkpoint_every_n_steps also every N steps (Lightning's step setting turns the epoch one off, so it is a
    # second callback: the end of training is always in last.ckpt).
    last = RunFolderCheckpoint(dirpath=folder, filename="last", monitor=None, save_top_k=1,
                               enable_version_counter=False)
    callbacks = [ReseedEachEpoch(config["seed"]), best, last, LearningRateMonitor(logging_interval="epoch")]
    if t.get("checkpoint_every_n_steps"):
        callbacks.insert(3, RunFolderCheckpoint(dirpath=folder, filename="last", monitor=None, save_top_k=1,
                                                enable_version_counter=False,
                                                every_n_train_steps=t["checkpoint_every_n_steps"]))
    if t["early_stopping_patience"] > 0 and t["monitor"]:
        callbacks.append(EarlyStopping(monitor=t["monitor"], mode=t["monitor_mode"],
                                       patience=t["early_stopping_patience"]))
    if t["ema_decay"]:
        # Validation, and so the checkpoints' choice, sees the averaged weights; the checkpoints hold them
        # (Lightning keeps the raw weights beside them, for resuming).
        callbacks.insert(0, EMAWithWarmup(t["ema_decay"]))
    if t["progress_bar"]:
        callbacks.append(ProgressBar(refresh_rate=10))
    callbacks += list(extra_callbacks)   # the caller's own (a tuner's pruning callback), after the run's
    loggers = [CSVLogger(run_dir, name=LOGS, version="", flush_logs_every_n_steps=10),
               TensorBoardLogger(run_dir, name=LOGS, version="tensorboard")]
    trainer = L.Trainer(
        accelerator=t["accelerator"], devices=t["devices"], num_nodes=t["num_nodes"], strategy=t["strategy"],
        precision=resolve_precision(t["precision"], t["accelerator"], torch.cuda.is_available(),
                                    torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
        max_epochs=t["max_epochs"], max_time=t["max_time"],
        limit_train_batches=t["limit_train_batches"], limit_val_batches=t["limit_val_batches"],
        log_every_n_steps=t["log_every_n_steps"], callbacks=callbacks, logger=loggers,
        enable_progress_bar=t["progress_bar"], enable_model_summary=False,
        # Same seed, same numbers on a CPU: deterministic kernels where torch has them.
        deterministic="warn" if t.get("deterministic", True) else False,
        default_root_dir=run_dir,
        plugins=[AtomicCheckpointIO()],   # written beside the target, fsynced, renamed; loaded weights-only
    )
    return trainer, best


def build_trainer_or_explain(config: dict, run_dir: Path, callbacks: list | None = None):
    """`build_trainer`; a setting Lightning refuses becomes a ConfigError naming the training settings."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return build_trainer(config, run_dir, callbacks or ())
    except (MisconfigurationException, ValueError, ImportError) as error:   # ImportError: e.g. tpu without torch_xla
        training = config["training"]
        settings = ", ".join(f"training.{key}={training[key]}" for key in
                             ("accelerator", "devices", "strategy", "precision", "num_nodes"))
        raise ConfigError(f"Lightning refused the training settings ({settings}): {error}") from None


def check_trainer_settings(config: dict) -> None:
    """Lightning's refusal of the training settings (an accelerator this machine lacks, an unknown precision),
    before any data is read or folder written: a Trainer built and dropped in a scratch folder."""
    # Its "GPU available ..." lines are the real Trainer's to say, once.
    quiet = [logging.getLogger(name) for name in ("lightning.pytorch.utilities.rank_zero",
                                                  "lightning.fabric.utilities.rank_zero")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="dermalens-settings-") as scratch:
            build_trainer_or_explain(config, Path(scratch))
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def set_aside_metrics_log(run_dir: Path) -> Path | None:
    """Lightning's CSVLogger deletes an existing metrics.csv; keep it to merge after resuming."""
    log_file = RunFolder(run_dir).metrics_log
    kept = log_file.with_name("metrics.before-resume.csv")
    if not log_file.is_file():   # an earlier resume killed before it logged anything leaves only the kept rows
        return kept if kept.is_file() else None
    if kept.is_file():  # an earlier resume was killed too (before its merge): fold it in first
        merge_metrics_logs(kept, log_file, resumed_step=None)
    log_file.replace(kept)
    return kept


def merge_metrics_logs(earlier: Path, current: Path, resumed_step: int | None) -> None:
    """earlier rows up to the resumed step + the new rows -> current (atomically); earlier is removed."""
    old = pd.read_csv(earlier)
    new = pd.read_csv(current) if current.is_file() else pd.DataFrame()
    if resumed_step is not None and "step" in old:
        old = old[old["step"] <= resumed_step]
    elif "step" in old and "step" in new and len(new):
        # An earlier resume was killed before it merged: its rows start where it resumed, and the earlier rows
        # from there on belong to training it replaced.
        old = old[old["step"] < new["step"].min()]
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
    cut_short: str | None = None   # said when training.max_time ended training before training.max_epochs
    precision: str | None = None   # the precision trained in (training.precision: auto resolved here)


class ProgressBar(TQDMProgressBar):
    """Lightning's bar without its `v_num`: the logger's version, which for the fixed log folders here shows
    as a meaningless "v_num=oard" (the end of "tensorboard")."""

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def budget_cut_short(trainer: L.Trainer, max_time) -> str | None:
    """What to say when the time budget, not the epochs, ended training (None when the epochs did).

    A slower or busier CPU then trains less than the recipe's epochs, with its schedule unfinished, and the
    figures are lower: said in the log, status.json and the report, never silently."""
    timer = next((callback for callback in trainer.callbacks if isinstance(callback, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if remaining is None or remaining > 0 or not trainer.max_epochs or trainer.max_epochs < 0:
        return None
    # Steps, not epochs: Lightning counts an epoch the timer stopped in as completed.
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches <= 0:
        return None
    steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
    if trainer.global_step >= trainer.max_epochs * steps_per_epoch:
        return None
    epoch = max(1, math.ceil(trainer.global_step / steps_per_epoch))   # the epoch its last step belongs to
    return (f"training.max_time ({max_time}) ended training in epoch {epoch} "
            f"of {trainer.max_epochs} (step {trainer.global_step} of {trainer.max_epochs * steps_per_epoch}): this "
            f"machine trained less than the recipe asks, so the figures are lower than the recipe's; give more "
            f"time or fewer epochs")


def check_training_classes(prepared: PreparedData) -> list[int]:
    """Training images per class; ConfigError when a class of the set has none (or there is one class)."""
    counts = np.bincount(prepared.labels[prepared.split == "train"], minlength=len(prepared.classes)).tolist()
    if sum(counts) == 0:
        raise ConfigError("the training split is empty: give more images")
    if len(prepared.classes) < 2:
        raise ConfigError(f"{prepared.dataset.root} holds one class ({', '.join(prepared.classes)}); a classifier "
                          f"needs at least two")
    missing = [code for code, count in zip(prepared.classes, counts) if count == 0]
    if len(prepared.classes) - len(missing) < 2:
        # A HAM10000 or ISIC layout keeps its 7 classes whatever its images show: one class with images trained
        # "to completion", validation balanced accuracy 1.0.
        learnt = [code for code, count in zip(prepared.classes, counts) if count]
        raise ConfigError(f"only class {', '.join(learnt)} has training images in {prepared.dataset.root} "
                          f"({sum(counts)} images); a classifier needs at least two")
    if missing:
        # A HAM10000-format folder keeps the 7 classes even when a partial download lacks some.
        warnings.warn(f"class(es) {', '.join(missing)} have no training images in {prepared.dataset.root}: the "
                      f"model cannot learn them; to train without them, list the others in data.classes",
                      stacklevel=2)
    return counts


def check_teacher_logits(config: dict, prepared: PreparedData, teacher_logits: np.ndarray | None,
                         resumed_run: Path | None) -> np.ndarray | None:
    """The teacher's logits a distilled run learns from (on resume: the run's own), checked before anything
    is written: one finite row per training image, one column per class."""
    weight = config["training"]["distillation_weight"]
    if resumed_run is not None and teacher_logits is None and RunFolder(resumed_run).teacher_logits_file.is_file():
        teacher_logits = np.load(RunFolder(resumed_run).teacher_logits_file, allow_pickle=False)
    if not weight:
        if teacher_logits is not None:
            raise ConfigError("teacher logits were given, but training.distillation_weight is 0: set a weight "
                              "in (0, 1] to distil, or train without them")
        return None
    if teacher_logits is None:
        raise ConfigError(f"training.distillation_weight={weight} needs a teacher's logits for the training images, "
                          f"which the command line does not take: distil through the Python API "
                          f"(dermalens.training.run.train(..., teacher_logits=...)), or set it to 0")
    teacher_logits = np.asarray(teacher_logits, dtype=np.float32)
    expected = (len(prepared.labels), len(prepared.classes))
    if teacher_logits.shape != expected:
        raise ConfigError(f"teacher logits have shape {teacher_logits.shape}; expected {expected} "
                          f"(one row per image, one column per class: {', '.join(prepared.classes)})")
    bad = prepared.rows("train")[~np.isfinite(teacher_logits[prepared.rows("train")]).all(axis=1)]
    if len(bad):
        names = prepared.dataset.records["image_id"].iloc[bad[:5]].tolist()
        raise ConfigError(f"teacher logits of {len(bad)} training images are not finite (e.g. {', '.join(names)})")
    return teacher_logits


def save_teacher_logits(path: Path, teacher_logits: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, teacher_logits, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def lightning_logs_through_root() -> None:
    """Lightning's lines printed once, at the level the application chose.

    `import lightning` gives its package logger a console handler of its own
    (and level INFO), while its records also propagate to the root handler
    the dermalens command sets up: every line twice, and INFO lines even
    without -v. Where the root logger has handlers, Lightning's go and its
    loggers take the root's level. (Used as a library without logging set
    up, Lightning keeps its own.)
    """
    root = logging.getLogger()
    if not root.handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(root.level)


@loads_own_checkpoints
def train(config: dict, run_dir: Path | None = None, resume: bool = False, progress: bool = True,
          prepared: PreparedData | None = None, calibrate_after_training: bool = True,
          callbacks: Sequence[Callback] = (), teacher_logits: np.ndarray | None = None) -> TrainResult:
    """Train (or resume) one run; calibrate on validation; evaluate the best checkpoint on the test split once.

    prepared: the data with its split already decided (a cross-validation fold); else read here.
    calibrate_after_training False: a fold of a cross-validated run, calibrated with the others.
    callbacks: Lightning callbacks added to the run's own (none by default).
    teacher_logits: (images, classes), a teacher's logits for each row of `prepared`, with
    training.distillation_weight > 0 (knowledge distillation); kept in the run folder for a resume.
    """
    lightning_logs_through_root()
    L.seed_everything(config["seed"], workers=True, verbose=False)
    config = with_absolute_paths(config)
    if resume:
        if run_dir is None:
            raise ConfigError("--resume needs a run folder")
        run_dir = RunFolder(run_dir).check_resumable()
    else:
        run_dir = Path(run_dir) if run_dir else shared_run_dir(config, new_run_dir)  # one folder for all DDP ranks
        run_dir = run_dir.expanduser().resolve()
        if RunFolder(run_dir).has_checkpoints():
            # Never overwrite a trained model: continuing is an explicit choice.
            raise ConfigError(f"run folder {run_dir} already holds checkpoints; use --resume {run_dir} "
                              f"or choose another --run-dir")
    # Everything that can fail on the data fails here, before the run folder exists (a backbone typo first:
    # reading the data can take minutes).
    check_backbone_name(config["model"]["backbone"])
    if prepared is None:   # a fold's settings were checked by its job
        check_trainer_settings(config)
        prepared = prepare_data(config, run_dir if resume else None, progress=progress)
    counts = check_training_classes(prepared)
    teacher_logits = check_teacher_logits(config, prepared, teacher_logits, run_dir if resume else None)
    # The class set is saved with the run, so a resume or evaluation reads the data the same way.
    config = {**config, "data": {**config["data"], "classes": list(prepared.classes)}}
    last = RunFolder(run_dir).checkpoint("last")
    status = RunFolder(run_dir).read_status() if resume else {}
    if status.get("training_done"):
        # Training had finished; its calibration or evaluation was stopped: do those, train nothing more.
        log.info("training of %s had finished; calibrating and evaluating %s", run_dir, status["best_checkpoint"])
        best, seconds = RunFolder(run_dir).recorded_best_checkpoint(status), float(status.get("train_seconds", 0.0))
        return finish_run(config, run_dir, TrainResult(run_dir, best, last, seconds, cut_short=status.get("cut_short"),
                                                       precision=status.get("precision")),
                          prepared, progress, calibrate_after_training, is_global_zero=True)
    module = LesionClassifierModule(
        classes=prepared.classes,
        model=config["model"], loss=config["loss"], optimizer=config["optimizer"], scheduler=config["scheduler"],
        training=config["training"], class_counts=counts,
        inputs_are_trunk_activations=bool(config["training"]["freeze_stages"] and config["training"]["cached_views"]),
    )
    log.info("backbone weights: %s", module.model.weights_source)
    datamodule = build_datamodule(config, prepared, module, progress, teacher_logits)
    # Before the run folder is written: a setting Lightning refuses (an accelerator this machine lacks, a
    # precision it does not know) must not leave a folder that says "running" forever.
    trainer, checkpoint = build_trainer_or_explain(config, run_dir, callbacks)

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RunFolder(run_dir).config_file, dump_config(config))   # on resume: with what was overridden
    save_run_data(prepared, run_dir)
    if teacher_logits is not None and not resume:
        save_teacher_logits(RunFolder(run_dir).teacher_logits_file, teacher_logits)
    # A resumed model's training time includes its earlier runs' (recorded when they stopped: a kill -9 loses
    # only the time since the last record).
    earlier_seconds = float(status.get("train_seconds", 0.0))
    RunFolder(run_dir).write_status("running", resumed=resume, train_seconds=round(earlier_seconds, 1))
    if resume:
        # Training goes on, so best.ckpt may change under its calibration record: a stop before the new one is
        # fitted must leave the model uncalibrated (and say so), not calibrated for other weights.
        stale = calibration_path(RunFolder(run_dir).checkpoint("best"))
        if stale.is_file():
            stale.unlink()
            log.info("%s removed: training goes on, and the run is calibrated again when it ends", stale.name)
    earlier_log = set_aside_metrics_log(run_dir) if resume else None
    resumed_step = AtomicCheckpointIO().load_checkpoint(last)["global_step"] if resume else None  # no unpickling
    started = time.perf_counter() - earlier_seconds

    def seconds_so_far() -> float:
        return round(time.perf_counter() - started, 1)

    try:
        with warnings.catch_warnings():
            # On resume the earlier metrics.csv was set aside above and is merged back below: nothing is lost.
            warnings.filterwarnings("ignore", message=".*Previous log files in this directory will be deleted")
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    except (KeyboardInterrupt, SystemExit) as stop:   # Lightning turns SIGTERM into SIGTERMException(SystemExit)
        RunFolder(run_dir).write_status("interrupted", last_checkpoint=str(last) if last.is_file() else None,
                                        train_seconds=seconds_so_far())
        raise TrainingInterrupted(run_dir, last if last.is_file() else None) from stop
    except Exception as error:
        RunFolder(run_dir).write_status("failed", error=f"{type(error).__name__}: {error}",
                                        traceback=traceback.format_exc(limit=20), train_seconds=seconds_so_far())
        raise
    finally:
        if earlier_log is not None and trainer.is_global_zero:
            merge_metrics_logs(earlier_log, RunFolder(run_dir).metrics_log, resumed_step=resumed_step)
    if trainer.received_sigterm:
        RunFolder(run_dir).write_status("interrupted", last_checkpoint=str(last), train_seconds=seconds_so_far())
        raise TrainingInterrupted(run_dir, last)
    seconds = time.perf_counter() - started
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    cut_short = budget_cut_short(trainer, config["training"]["max_time"])
    precision = str(trainer.precision)   # what `auto` became on this machine: the run folder says it
    if cut_short and trainer.is_global_zero:
        log.warning("%s: %s", run_dir, cut_short)
    return finish_run(config, run_dir, TrainResult(run_dir, best, last, seconds, cut_short=cut_short,
                                                   precision=precision), prepared,
                      progress, calibrate_after_training, trainer.is_global_zero)


@contextlib.contextmanager
def _sigterm_handled_by(handler) -> Iterator[None]:
    """`handler` for SIGTERM while the block runs, the previous one after it (off the main thread, where
    signals cannot be caught, nothing changes)."""
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def sigterm_raises():
    """SIGTERM as an exception (Lightning's own handler is gone once fit returns), so a stop is recorded."""
    return _sigterm_handled_by(_raise_on_sigterm)


def lightning_handles_sigterm():
    """Inside `sigterm_raises`: the default SIGTERM action back while Lightning trains, so that it installs
    its own handler (and stops at a step's end, as in a single run) rather than chaining to one that raises
    mid-step."""
    return _sigterm_handled_by(signal.SIG_DFL)


def finish_run(config: dict, run_dir: Path, result: TrainResult, prepared: PreparedData, progress: bool,
               calibrate_after_training: bool, is_global_zero: bool) -> TrainResult:
    """After training: calibrate on validation, evaluate on test once; a stop here is recorded and resumable."""
    if not is_global_zero:
        return result
    # "training_done": a resume goes straight to calibration and evaluation.
    # What the run folder says of how it trained, in every status it writes from here on.
    how = {key: value for key, value in (("cut_short", result.cut_short), ("precision", result.precision)) if value}
    done = {"training_done": True, "best_checkpoint": str(result.best_checkpoint),
            "train_seconds": round(result.train_seconds, 1), **how}
    RunFolder(run_dir).write_status("evaluating", **done)
    try:
        with sigterm_raises():
            if calibrate_after_training:
                calibrate_on_validation(config, result.best_checkpoint, prepared, progress)
            if config["evaluation"]["after_training"]:
                note = {"training_cut_short": result.cut_short} if result.cut_short else {}
                if result.precision:
                    note["trained_in_precision"] = result.precision
                result.metrics = evaluate_checkpoint(config, result.best_checkpoint, run_dir, prepared=prepared,
                                                     progress=progress,
                                                     extra_context={"train_seconds": round(result.train_seconds, 1),
                                                                    **note})
    except (KeyboardInterrupt, SystemExit) as stop:
        RunFolder(run_dir).write_status("interrupted", stage="evaluation", **done)
        raise TrainingInterrupted(run_dir, result.last_checkpoint, during="evaluation") from stop
    except Exception as error:
        RunFolder(run_dir).write_status("failed", stage="evaluation", error=f"{type(error).__name__}: {error}",
                     traceback=traceback.format_exc(limit=20), **done)
        raise
    RunFolder(run_dir).write_status("finished", best_checkpoint=str(result.best_checkpoint),
                 train_seconds=round(result.train_seconds, 1), **how)
    return result


def calibrate_on_validation(config: dict, checkpoint: Path, prepared: PreparedData, progress: bool = True) -> dict:
    """Temperature and decision rule fitted on the run's validation split (with the evaluation's TTA)."""
    meta = read_checkpoint_metadata(checkpoint)[CHECKPOINT_KEY]
    rows = prepared.rows("val")
    if len(rows) == 0:
        log.warning("no validation split: the model is left uncalibrated (temperature 1, raw argmax)")
        return calibrate(checkpoint, np.zeros((0, len(meta["classes"]))), np.zeros(0, dtype=np.int64),
                         meta["classes"], {**config["evaluation"], "temperature_scaling": False,
                                           "decision_rule": "raw", "melanoma_specificity": None}, "nothing")
    ev = config["evaluation"]
    predictor = load_predictor(checkpoint, tta=ev["tta"])   # ONNX Runtime where it can: as evaluation runs
    logits = logits_for_images(predictor, prepared.images[rows], ev["batch_size"], progress=progress,
                               description="calibrate on val")
    return calibrate(checkpoint, logits, prepared.labels[rows], meta["classes"], ev,
                     f"the validation split ({len(rows)} images)")
