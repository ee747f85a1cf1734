"""K-fold cross-validation over train + val, and the fold models shipped as one ensemble.

`dermalens train --folds K` (training.folds): the test split is drawn as
usual and never looked at until the end; what is left is cut into K
lesion-grouped, class-stratified folds. Fold k's model trains on the other
K-1 folds and is validated on fold k, so every non-test image gets one
out-of-fold prediction from a model that never saw its lesion. From those:

- `cv.json`: each fold's validation metrics, their mean and standard
  deviation, and the metrics of the pooled out-of-fold predictions: the
  numbers to compare recipes with (one validation split of ~850 images with
  8 dermatofibromas is too noisy for that);
- with `training.ensemble` (the default), the K fold models become ONE model
  (`models.ensemble.LesionEnsemble`, the mean of their logits) in
  `checkpoints/best.ckpt`, its temperature and decision rule fitted on the
  out-of-fold predictions, then evaluated once on the test split.

Run folder: the run's own files (config.yaml, split.csv with a `fold`
column, cv.json, checkpoints/, metrics.json, report.md) and one ordinary
run folder per fold (fold-1/ ... fold-K/). The training budget
(training.max_time) is the whole job's: each fold gets an equal share of
what is left when it starts. An interrupted job resumes fold by fold.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from lightning.pytorch.callbacks import Callback

from ..atomic_io import atomic_write_json, atomic_write_text
from ..config import AugmentationSection, ConfigError, TrainingSection, dump_config, section
from ..data.prepare import EXCLUDED, PreparedData, prepare_data, save_run_data
from ..data.split import SmallClassWarning, lesion_grouped_kfold, lesion_grouped_split
from ..evaluation.evaluate import evaluate_checkpoint
from ..evaluation.metrics import compute_classification_metrics, figures_by_source, sensitivity_at_specificity
from ..evaluation.plots import plot_fold_metrics
from ..inference.postprocess import calibrated_probabilities
from ..models.checkpoint import load_classifier, loads_own_checkpoints, save_classifier
from ..models.classifier import check_backbone_name
from ..models.ensemble import LesionEnsemble, trunks_identical
from ..run_folder import FIGURES, OUT_OF_FOLD_LOGITS, RunFolder
from .calibrate import calibrate, fitted_temperature
from .errors import TrainingInterrupted
from .frozen_trunk import TrunkActivations, TrunkSpec
from .held_out_logits import out_of_fold_logits
from .run import (
    check_trainer_settings,
    lightning_handles_sigterm,
    member_config,
    new_run_dir,
    sigterm_raises,
    train,
    trunk_cache_dir,
    with_absolute_paths,
)
from .student import distil_student, ship_student

log = logging.getLogger(__name__)
SUMMARY_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "auc_macro", "mel_sensitivity_at_80_specificity")
FIGURE_METRICS = (("balanced_accuracy", "bal. acc."), ("accuracy", "accuracy"), ("macro_f1", "macro F1"),
                  ("auc_macro", "macro AUC"), ("mel_sensitivity_at_80_specificity", "mel sens.\n@80% spec."))


@dataclass
class CrossValidationResult:
    run_dir: Path
    folds: list[Path]
    summary: dict
    best_checkpoint: Path | None = None     # the ensemble, when one was built
    metrics: dict | None = None             # its test metrics, when evaluated
    train_seconds: float = 0.0


def parse_duration(text: str | None) -> float | None:
    """Lightning's "DD:HH:MM:SS" -> seconds."""
    if not text:
        return None
    days, hours, minutes, seconds = (int(part) for part in str(text).split(":"))
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()


def format_duration(seconds: float) -> str:
    seconds = max(60, int(seconds))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


def assign_folds(prepared: PreparedData, folds: int, seed: int) -> np.ndarray:
    """Fold number per row of the train + val pool (lesion-grouped, stratified); -1 for test and excluded rows."""
    pool = np.flatnonzero(np.isin(prepared.split, ("train", "val")))
    if len(pool) == 0:
        raise ConfigError("no images left for cross-validation besides the test split")
    records = prepared.dataset.records.iloc[pool].reset_index(drop=True)
    assignment = np.full(len(prepared.split), -1, dtype=np.int64)
    try:
        assignment[pool] = lesion_grouped_kfold(records, folds, seed).to_numpy()
    except ValueError as error:
        raise ConfigError(f"cannot make {folds} folds: {error}") from None
    return assignment


def saved_folds(prepared: PreparedData, split_file: Path, folds: int) -> np.ndarray | None:
    """The fold of each pool row as the run's split.csv records it (-1 for test and excluded rows); None when
    it records none (a split.csv written before the folds were drawn, as a nested run's is: draw them).

    A resume must score each fold's images with the fold model that did not train on them: the folds are
    read, not drawn again, since an image gone from the data would move many others to another fold."""
    table = pd.read_csv(split_file, dtype={"image_id": str}, keep_default_na=False)
    if "fold" not in table:
        return None
    fold_of = dict(zip(table["image_id"], pd.to_numeric(table["fold"], errors="coerce")))
    pool = np.isin(prepared.split, ("train", "val"))
    image_ids = prepared.dataset.records["image_id"].to_numpy()
    recorded = np.array([fold_of.get(image_id, np.nan) for image_id in image_ids], dtype=float)
    unknown = pool & ~np.isin(recorded, np.arange(1, folds + 1))
    if unknown.any():
        shown = ", ".join(image_ids[unknown][:5])
        raise ConfigError(f"{split_file} gives {int(unknown.sum())} training image(s) no fold of 1..{folds} "
                          f"(e.g. {shown}); the run's folds cannot be rebuilt")
    return np.where(pool, np.nan_to_num(recorded, nan=0.0).astype(np.int64) - 1, -1)


def fold_split(prepared: PreparedData, assignment: np.ndarray, fold: int, inner_val_fraction: float | None = None,
               seed: int = 0, recorded: Path | None = None) -> np.ndarray:
    """The split one fold model trains on: the other folds train, its own fold is held out.

    Without `inner_val_fraction` the held-out fold is its validation split, only watched (the training curves):
    nothing is chosen on it. With one (training.monitor set: the best epoch, early stopping and a plateau
    schedule follow the validation metric), the validation split is that share of the other folds' lesions,
    grouped and stratified, and the fold's own images are set aside as "test", never seen by its training: a
    checkpoint chosen on them would make their out-of-fold predictions, and every figure and fit made on
    them, read high. `recorded`: the fold's split.csv from its first start, whose validation images a resumed
    fold keeps (a split drawn again over data that changed since would be another).
    """
    split = np.asarray(prepared.split, dtype=object).copy()
    pool = assignment >= 0
    if inner_val_fraction is None:
        split[pool] = np.where(assignment[pool] == fold, "val", "train")
        return split
    training = np.flatnonzero(pool & (assignment != fold))
    split[pool & (assignment == fold)] = "test"
    split[training] = "train"
    records = prepared.dataset.records.iloc[training].reset_index(drop=True)
    if recorded is not None and recorded.is_file():
        table = pd.read_csv(recorded, dtype={"image_id": str}, keep_default_na=False)
        kept = records["image_id"].isin(set(table.loc[table["split"] == "val", "image_id"])).to_numpy()
        if kept.any():   # a fold started by a version that chose on its own fold records none of these: draw
            split[training[kept]] = "val"
            return split
    try:
        # As the run's own validation split is drawn (small classes may miss it: the run's split said so).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallClassWarning)
            inner = lesion_grouped_split(records, inner_val_fraction, 0.0, (seed + fold) % 2**32,
                                         classes=prepared.classes).to_numpy()
    except ValueError as error:
        raise NoInnerValidation(f"fold {fold + 1}: its training folds are too small to hold out a validation "
                                f"split for training.monitor ({error})") from None
    split[training[inner == "val"]] = "val"
    return split


class NoInnerValidation(ConfigError):
    """A fold's training folds cannot spare a validation split (tiny data): it chooses on its own fold."""


def write_fold_split_csv(prepared: PreparedData, assignment: np.ndarray, path: Path) -> None:
    """The run's split.csv: pool rows are 'train' with their fold (1..K); test rows 'test'."""
    usable = prepared.split != EXCLUDED
    records = prepared.dataset.records[usable]
    split = np.where(assignment[usable] >= 0, "train", prepared.split[usable])
    table = records[["image_id", "lesion_id", "label"]].assign(
        split=split, fold=np.where(assignment[usable] >= 0, assignment[usable] + 1, 0))
    atomic_write_text(path, table.to_csv(index=False))


def summarise(probabilities: np.ndarray, labels: np.ndarray, classes) -> dict:
    """The numbers recipes are compared on (argmax of calibrated probabilities)."""
    metrics = compute_classification_metrics(probabilities, labels, classes, n_bootstrap=0)
    summary = {key: metrics[key] for key in ("balanced_accuracy", "accuracy", "macro_f1", "auc_macro")}
    summary["recall"] = {code: stats["recall"] for code, stats in metrics["per_class"].items()}
    if "mel" in classes:
        point = sensitivity_at_specificity(probabilities[:, list(classes).index("mel")],
                                           labels == list(classes).index("mel"), (0.8,), n_bootstrap=0)
        summary["mel_sensitivity_at_80_specificity"] = point["sensitivity_at_80_specificity"]["value"]
    return summary


def mean_and_sd(per_fold: list[dict]) -> dict:
    out = {}
    for key in SUMMARY_METRICS:
        values = [fold[key] for fold in per_fold if fold.get(key) is not None]
        if values:
            out[key] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
    return out


def out_of_fold_summary(logits: np.ndarray, labels: np.ndarray, classes: Sequence[str], assignment: np.ndarray,
                        trained_folds: int, sources: np.ndarray | None, evaluation: dict) -> dict:
    """cv.json's figures: each trained fold's held-out images, their mean ± sd and the pooled out-of-fold row.

    `logits` and `labels` hold every prepared image, `assignment` its fold (0-based; -1: not in the pool).
    The probabilities are at the temperature the shipped model gets (`fitted_temperature`: fitted on the pooled
    logits, or 1 with evaluation.temperature_scaling off), each fold's as well as the pooled ones: one-vs-rest
    AUC and the melanoma operating point move with it, so the folds' mean ± sd and the pooled figures describe
    the same probabilities as the model that is shipped.
    """
    pool = np.flatnonzero((assignment >= 0) & (assignment < trained_folds))
    temperature = fitted_temperature(logits[pool], labels[pool], evaluation)
    per_fold = []
    for fold in range(trained_folds):
        rows = np.flatnonzero(assignment == fold)
        per_fold.append({"fold": fold + 1, "images": int(len(rows)),
                         **summarise(calibrated_probabilities(logits[rows], temperature), labels[rows], classes)})
    pooled_probabilities = calibrated_probabilities(logits[pool], temperature)
    summary = {"folds": per_fold, "mean_sd": mean_and_sd(per_fold),
               "out_of_fold": summarise(pooled_probabilities, labels[pool], classes),
               "out_of_fold_temperature": temperature, "images": int(len(pool)), "folds_trained": trained_folds}
    # Each source's out-of-fold figures (argmax, as `out_of_fold`): more images per source than a test split.
    by_source = figures_by_source(None if sources is None else sources[pool], pooled_probabilities, labels[pool],
                                  classes)
    if by_source:
        summary["out_of_fold_by_source"] = by_source
    return summary


def build_ensemble_checkpoint(fold_checkpoints: list[Path], out: Path, shared_trunk_stages: int) -> Path:
    """One checkpoint holding the fold models as a `LesionEnsemble`, with the metadata of a single model."""
    members, metas = zip(*(load_classifier(path) for path in fold_checkpoints))
    stages = shared_trunk_stages if shared_trunk_stages and trunks_identical(members, shared_trunk_stages) else 0
    ensemble = LesionEnsemble(list(members), stages)
    meta = dict(metas[0])
    meta["ensemble"] = {**ensemble.ensemble_record(),
                        "member_checkpoints": [str(p.relative_to(out.parents[1])) for p in fold_checkpoints],
                        "member_epochs": [m.get("epoch") for m in metas]}
    meta["val_metrics"] = {}
    return save_classifier(ensemble, meta, out)


@loads_own_checkpoints
def train_folds(config: dict, run_dir: Path | None = None, resume: bool = False,
                progress: bool = True, first_folds: int | None = None,
                fold_callbacks: Callable[[int], Sequence[Callback]] | None = None) -> CrossValidationResult:
    """Train one model per fold; summarise; with training.ensemble, ship them as one calibrated, tested model.

    first_folds: train only the first N folds (a cheaper comparison of recipes: their out-of-fold figures
    cover those folds' images; no ensemble is built).
    fold_callbacks: fold number (1..K) -> Lightning callbacks added to that fold's training (e.g. a tuner's
    pruning callback on fold 1 only); none by default.
    """
    config = with_absolute_paths(config)
    training = section(TrainingSection, config["training"])
    folds = training.folds
    if folds < 2:
        raise ConfigError(f"cross-validation needs training.folds >= 2, got {folds}")
    if training.distillation_weight and not training.student:
        raise ConfigError("training.distillation_weight is for one model taught by a teacher's logits "
                          "(train(..., teacher_logits=...), or training.student); cross-validation's fold models "
                          "learn from the labels: set it to 0")
    trained_folds = folds if first_folds is None else max(1, min(folds, first_folds))
    if training.monitor and not config["data"]["val_fraction"] > 0:
        raise ConfigError(f"training.monitor={training.monitor} chooses on a validation split, which cross-validation "
                          f"draws from each fold model's training folds (data.val_fraction, here "
                          f"{config['data']['val_fraction']}): set data.val_fraction above 0, or training.monitor=null")
    if trained_folds < folds and (training.ensemble or training.student):
        shipped = "a student" if training.student else "an ensemble"
        raise ConfigError(f"{shipped} needs every fold's model: train all folds, or set training.ensemble=false "
                          f"and training.student=false")
    run_dir = Path(run_dir) if run_dir else new_run_dir(config)
    run_dir = run_dir.expanduser().resolve()
    folder = RunFolder(run_dir)
    if not resume and (folder.cv_file.exists() or folder.has_checkpoints()
                       or any(RunFolder(fold).has_checkpoints() for fold in run_dir.glob("fold-*"))):
        # Never overwrite a trained model, nor mix fold models of two recipes or two fold assignments.
        raise ConfigError(f"run folder {run_dir} already holds trained models; use --resume {run_dir} "
                          f"or choose another --run-dir")
    # On resume the job's time (reported, and counted against max_time) includes its earlier runs', as
    # recorded when they stopped.
    earlier_seconds = float(folder.read_status().get("train_seconds", 0.0)) if resume else 0.0
    started = time.perf_counter() - earlier_seconds
    budget = parse_duration(training.max_time)
    check_backbone_name(config["model"]["backbone"])   # before the data is read
    check_trainer_settings(config)                    # and before the run folder is written
    prepared = prepare_data(config, run_dir if resume else None, progress=progress)
    assignment = saved_folds(prepared, folder.split_file, folds) if resume and folder.split_file.is_file() else None
    if assignment is None:
        assignment = assign_folds(prepared, folds, config["seed"])
    config = {**config, "data": {**config["data"], "classes": list(prepared.classes)}}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RunFolder(run_dir).config_file, dump_config(config))
    save_run_data(dataclasses.replace(prepared, split=np.where(assignment >= 0, "train", prepared.split)), run_dir)
    write_fold_split_csv(prepared, assignment, RunFolder(run_dir).split_file)
    RunFolder(run_dir).write_status("running", folds=folds, train_seconds=round(earlier_seconds, 1))

    def seconds_so_far() -> float:
        return round(time.perf_counter() - started, 1)

    try:
        # A stop outside fold training (out-of-fold predictions, the ensemble, the evaluation) is recorded
        # too; each fold's training handles its own stops (see `lightning_handles_sigterm`).
        with sigterm_raises():
            activations = None
            if training.freeze_stages and training.cached_views:
                # One cache for every fold: each pool image is a training image in K-1 folds, validated in one.
                from ..models.classifier import ModelConfig, create_classifier

                model = create_classifier(ModelConfig(**{**config["model"], "num_classes": len(prepared.classes)}))
                activations = TrunkActivations(model, prepared.images, TrunkSpec(training.freeze_stages, training.cached_views,
                                                                                 config["seed"]),
                                               section(AugmentationSection, config["augmentation"]),
                                               cache_dir=trunk_cache_dir(config), progress=progress)
                try:   # SIGTERM raises here already (the sigterm_raises above); the stop names its stage
                    activations.ensure(np.flatnonzero(assignment >= 0), range(activations.spec.views))
                except (KeyboardInterrupt, SystemExit) as stop:   # a stop is recorded, as one during training is
                    RunFolder(run_dir).write_status("interrupted", stage="trunk cache", folds=folds,
                                                    train_seconds=seconds_so_far())
                    raise TrainingInterrupted(run_dir, None, during="trunk cache") from stop

            # The budget is shared by every training left: the fold models, then (training.student) one student per
            # fold and the student itself.
            student_trainings = folds + 1 if training.student else 0

            def share_of_budget(trainings_left: int) -> str | None:
                if budget is None:
                    return None
                return format_duration((budget - (time.perf_counter() - started)) / trainings_left)

            # A fold model that chooses anything on validation does it on a split of its training folds.
            inner_val_fraction = config["data"]["val_fraction"] if training.monitor else None
            if inner_val_fraction is not None:
                log.info("training.monitor=%s: each fold model chooses on 1 of %d lesion-grouped parts of its "
                         "training folds (data.val_fraction %g); its own fold stays unseen until it is predicted",
                         training.monitor, max(2, round(1 / inner_val_fraction)), inner_val_fraction)
            fold_dirs, fold_checkpoints, chose_on_own_fold = [], [], []
            oof_logits = np.zeros((len(prepared.labels), len(prepared.classes)), dtype=np.float32)
            for fold in range(trained_folds):
                fold_dir = RunFolder(run_dir).fold(fold + 1).path
                fold_dirs.append(fold_dir)
                recorded = RunFolder(fold_dir).split_file if resume else None
                try:
                    fold_splits = fold_split(prepared, assignment, fold, inner_val_fraction, config["seed"],
                                             recorded)
                except NoInnerValidation as error:
                    log.warning("%s: it chooses on its own fold, so the out-of-fold figures read high; "
                                "training.monitor=null keeps the end of the schedule instead", error)
                    chose_on_own_fold.append(fold + 1)
                    fold_splits = fold_split(prepared, assignment, fold)
                fold_prepared = dataclasses.replace(prepared, split=fold_splits,
                                                    split_source=f"fold {fold + 1} of {folds} ({RunFolder(run_dir).split_file})")
                # Each fold gets the share it has in the whole K-fold job, also when only the first folds
                # are trained: a cheap look (first_folds) then trains each fold as the full job would.
                fold_config = member_config(config, f"fold{fold + 1}",
                                            share_of_budget(folds - fold + student_trainings))
                status = RunFolder(fold_dir).read_status()
                if status.get("state") == "finished":
                    best = RunFolder(fold_dir).recorded_best_checkpoint(status)
                else:
                    can_resume = resume and RunFolder(fold_dir).checkpoint("last").is_file()
                    log.info("fold %d of %d: %s", fold + 1, folds, "resuming" if can_resume else "training")
                    with lightning_handles_sigterm():
                        best = train(fold_config, fold_dir, resume=can_resume, progress=progress,
                                     prepared=fold_prepared, calibrate_after_training=False,
                                     callbacks=fold_callbacks(fold + 1) if fold_callbacks else ()).best_checkpoint
                fold_checkpoints.append(best)
                rows = np.flatnonzero(assignment == fold)
                oof_logits[rows] = out_of_fold_logits(config, best, prepared, rows, activations, progress)
            train_seconds = time.perf_counter() - started

            pool = np.flatnonzero((assignment >= 0) & (assignment < trained_folds))
            summary = out_of_fold_summary(oof_logits, prepared.labels, prepared.classes, assignment, trained_folds,
                                          prepared.sources, config["evaluation"])
            summary.update(train_seconds=round(train_seconds, 1),
                           trunk_seconds=round(activations.seconds_computing, 1) if activations else 0.0)
            if chose_on_own_fold:
                summary["chose_on_own_fold"] = chose_on_own_fold
                summary["caution"] = (f"fold model(s) {', '.join(map(str, chose_on_own_fold))} chose their epoch "
                                      f"(training.monitor) on their own held-out fold, too small to spare a "
                                      f"validation split: the out-of-fold figures read high")
            np.save(run_dir / OUT_OF_FOLD_LOGITS, oof_logits[pool])
            plot_fold_metrics(summary["folds"], summary["out_of_fold"], FIGURE_METRICS,
                              run_dir / FIGURES / "cross_validation.png",
                              title=f"{folds}-fold cross-validation, {trained_folds} fold(s) trained ({len(pool)} images)")
            result = CrossValidationResult(run_dir, fold_dirs, summary, train_seconds=train_seconds)
            if training.student:
                student = distil_student(config, run_dir, prepared, assignment, oof_logits, activations, share_of_budget,
                                         progress)
                train_seconds = result.train_seconds = time.perf_counter() - started
                best = ship_student(student.checkpoint, RunFolder(run_dir).checkpoint("best"), folds, config["training"])
                fitted_on = f"out-of-fold predictions of {folds} students, each trained without its fold ({len(pool)} images)"
                summary["calibration"] = calibrate(best, student.out_of_fold, prepared.labels[pool], prepared.classes,
                                                   config["evaluation"], fitted_on)
                summary["student"] = {
                    "out_of_fold": summarise(calibrated_probabilities(student.out_of_fold,
                                                                      summary["calibration"]["temperature"]),
                                             prepared.labels[pool], prepared.classes),
                    "train_seconds": round(student.train_seconds, 1),
                    "caution": "these read high: each out-of-fold student learned from fold models that saw the fold it "
                               "predicts; compare a student with the ensemble on images neither saw "
                               "(scripts/weight_averaging.py --own-rule)"}
                summary["train_seconds"] = round(train_seconds, 1)
                result.best_checkpoint = best
            elif training.ensemble:
                best = build_ensemble_checkpoint(fold_checkpoints, RunFolder(run_dir).checkpoint("best"),
                                                 training.freeze_stages)
                summary["calibration"] = calibrate(best, oof_logits[pool], prepared.labels[pool], prepared.classes,
                                                   config["evaluation"], f"out-of-fold predictions ({len(pool)} images)")
                result.best_checkpoint = best
            cut = cut_short_trainings(run_dir)
            trained_in = sorted({status["precision"] for folder in fold_dirs
                                 if (status := RunFolder(folder).read_status()).get("precision")})
            note = {"trained_in_precision": ", ".join(trained_in)} if trained_in else {}
            if cut:   # each training said it; the job's figures, status and report say it too
                summary["cut_short"] = cut
                note["training_cut_short"] = (f"training.max_time ended {len(cut)} of this job's trainings before "
                                              f"their epochs ({', '.join(cut)}; cv.json): the figures are lower "
                                              f"than the recipe's; give more time or fewer epochs")
                log.warning("%s: %s", run_dir, note["training_cut_short"])
            atomic_write_json(RunFolder(run_dir).cv_file, summary)
            if result.best_checkpoint and config["evaluation"]["after_training"] and len(prepared.rows("test")):
                result.metrics = evaluate_checkpoint(config, result.best_checkpoint, run_dir, prepared=prepared,
                                                     progress=progress, extra_context={
                                                         "train_seconds": round(train_seconds, 1),
                                                         "cross_validation": f"{folds} folds (cv.json)" + (
                                                             "; shipped: one student distilled from them"
                                                             if training.student else ""), **note})
            RunFolder(run_dir).write_status("finished", best_checkpoint=str(result.best_checkpoint) if result.best_checkpoint else None,
                         train_seconds=round(train_seconds, 1), **({"cut_short": cut} if cut else {}))
            return result
    except TrainingInterrupted:
        if RunFolder(run_dir).read_status().get("state") == "running":   # the trunk cache's stop says more
            RunFolder(run_dir).write_status("interrupted", folds=folds, train_seconds=seconds_so_far())
        raise
    except (KeyboardInterrupt, SystemExit) as stop:
        RunFolder(run_dir).write_status("interrupted", folds=folds, train_seconds=seconds_so_far())
        raise TrainingInterrupted(run_dir, None, during="cross-validation") from stop
    except Exception as error:   # the folder must not say "running" once nothing runs
        RunFolder(run_dir).write_status("failed", folds=folds, error=f"{type(error).__name__}: {error}",
                                        train_seconds=seconds_so_far())
        raise


def folds_table(summary: dict) -> pd.DataFrame:
    """cv.json as a table: one row per fold, then mean, sd and the pooled out-of-fold figures."""
    rows = [{"fold": f["fold"], **{k: f.get(k) for k in SUMMARY_METRICS}} for f in summary["folds"]]
    rows.append({"fold": "mean", **{k: v["mean"] for k, v in summary["mean_sd"].items()}})
    rows.append({"fold": "sd", **{k: v["sd"] for k, v in summary["mean_sd"].items()}})
    rows.append({"fold": "out-of-fold", **{k: summary["out_of_fold"].get(k) for k in SUMMARY_METRICS}})
    return pd.DataFrame(rows)


def cut_short_trainings(run_dir: Path) -> dict[str, str]:
    """Folder name -> what was said, for each of a job's trainings (fold models, students) whose epochs the time
    budget cut short (their status.json)."""
    return {folder.name: note for folder in sorted(Path(run_dir).iterdir())
            if folder.is_dir() and folder.name.startswith(("fold-", "student"))
            and (note := RunFolder(folder).read_status().get("cut_short"))}


def format_cross_validation(summary: dict) -> str:
    """The lines `dermalens train --folds K` prints: each fold, mean +- sd, and the pooled out-of-fold figures."""
    table = folds_table(summary)
    names = {"balanced_accuracy": "bal.acc", "accuracy": "acc", "macro_f1": "macroF1", "auc_macro": "AUC",
             "mel_sensitivity_at_80_specificity": "mel sens@80%spec"}
    lines = [f"\ncross-validation, {len(summary['folds'])} folds over {summary['images']} images (validation of each "
             f"fold; the test split is not used):", "  " + " " * 12 + "".join(f"{names[k]:>18s}" for k in SUMMARY_METRICS)]
    for _, row in table.iterrows():
        cells = "".join(f"{row[k]:18.3f}" if isinstance(row[k], float) and row[k] == row[k] else f"{'n/a':>18s}"
                        for k in SUMMARY_METRICS)
        lines.append(f"  {str(row['fold']):12s}{cells}")
    if summary.get("caution"):
        lines.append(f"WARNING: {summary['caution']}")
    if summary.get("cut_short"):
        lines.append(f"WARNING: training.max_time ended {', '.join(summary['cut_short'])} before their epochs: these "
                     f"figures are lower than the recipe's (cv.json says where each stopped)")
    return "\n".join(lines)
