"""Evaluate a checkpoint on one split: predictions, metrics, report. No side effects.

Like torchvision's reference `evaluate`, this computes and reports; it
writes only into its output folder. The temperature comes from the model's
own calibration record, which training alone writes (fitted on the run's
validation split, for the predictor that is served: same TTA setting).
"""
from __future__ import annotations

import logging
import subprocess
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..atomic_io import atomic_write_text
from ..data.geometry import MAX_ENLARGEMENT, enlargement
from ..data.prepare import PreparedData, prepare_data
from ..data.split import has_official_splits
from ..data.validation import write_issues_csv
from ..inference.load import load_predictor, logits_for_images, model_record
from ..inference.postprocess import DecisionRule, calibrated_probabilities
from ..models.calibration_record import calibration_path
from ..models.description import model_name
from ..run_folder import ISSUES_FILE, RunFolder
from .medmnist import FLAG as MEDMNIST_FLAG
from .medmnist import write_medmnist_result
from .metrics import compute_classification_metrics, expected_calibration_error, figures_by_source
from .report import write_evaluation_report

SPLITS = ("train", "val", "test", "all")
PREDICTIONS_FILE = "predictions.csv"
log = logging.getLogger(__name__)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def split_method(prepared: PreparedData, split: str, own_run: bool = False) -> str:
    """How the evaluated images were chosen, said plainly (a folder without lesion ids is split per image).

    own_run: the data is the run's own, read through its split.csv."""
    records = prepared.dataset.records
    if split == "all":
        if own_run:   # first: a run trained on one ISIC 2018 set is an official set too
            return "every image of the run's data, its training images included (optimistic figures)"
        sets = set(records["official_split"].dropna())
        if prepared.dataset.name == "isic2018" and len(sets) == 1:
            named = {"train": "Training", "val": "Validation", "test": "Test"}.get(sets.pop(), "?")
            return f"every image of the official ISIC 2018 {named} set (no split)"
        return "every image of the data set (no split)"
    if has_official_splits(records):
        return "official splits (per image)"
    if (records["lesion_id"] == records["image_id"]).all():
        return "split per image (no lesion ids): photos of one lesion may sit in different splits"
    return f"grouped by lesion_id, stratified ({prepared.split_source})"


def evaluate_checkpoint(config: dict, checkpoint: Path, out_dir: Path, *, prepared: PreparedData | None = None,
                        split: str | None = None, split_dir: Path | None = None, progress: bool = True,
                        extra_context: dict | None = None, runtime: str = "auto") -> dict:
    """Metrics of `checkpoint` (a .ckpt or a model package folder) on one split of the config's data,
    written into `out_dir` only.

    split: train | val | test | all (every usable image: an external set scored whole).
    split_dir: the run folder whose split.csv to use. runtime: as for `load_predictor` (auto: ONNX
    Runtime on the checkpoint's cached export, PyTorch where that cannot be). The temperature and the
    decision rule come from the model's calibration record (training fits
    them); the headline metrics follow the rule, and the raw argmax's are
    reported beside them.
    """
    ev = config["evaluation"]
    split = split or ev["split"]
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    meta, calibration = model_record(checkpoint)   # a checkpoint or a model package folder
    # The data is labelled by the model's own class set (images of other classes are bad data items).
    prepared = prepared or prepare_data(config, split_dir, progress, classes=meta["classes"],
                                        split_needed=split != "all")
    if tuple(prepared.classes) != tuple(meta["classes"]):
        raise ValueError(f"the data is labelled with classes {', '.join(prepared.classes)}; {checkpoint} predicts "
                         f"{', '.join(meta['classes'])}")
    pre = meta["preprocessing"]
    if pre.image_size != prepared.images.shape[1]:
        raise ValueError(f"checkpoint expects {pre.image_size}px images, the prepared data is {prepared.images.shape[1]}px")
    rows = prepared.rows(split)
    if len(rows) == 0:
        if split_dir is not None:   # the run's own data: --split all would score its training images too
            cross_validated = RunFolder(split_dir).cv_file.is_file()
            raise ValueError(f"split '{split}' of the run {split_dir} is empty; nothing to evaluate"
                             + (" (a cross-validated run keeps no validation split: its out-of-fold figures are "
                                f"in {RunFolder(split_dir).cv_file.name})" if cross_validated and split == "val" else ""))
        raise ValueError(f"split '{split}' of {prepared.dataset.root} is empty; nothing to evaluate"
                         + ("" if split == "all" else " (use --split all to score every image)"))
    log.info("evaluating %s on %s split %s (%d images; split from %s); calibration record: %s; TTA: %s",
             checkpoint, prepared.dataset.name, split, len(rows), prepared.split_source,
             (checkpoint if Path(checkpoint).is_dir() else calibration_path(checkpoint))
             if calibration["fitted_on"] else "none (uncalibrated)",
             "flips (4 views)" if ev["tta"] else "none")
    predictor = load_predictor(checkpoint, tta=ev["tta"], runtime=runtime)
    log.info("runtime: %s", predictor.runtime)
    logits = logits_for_images(predictor, prepared.images[rows], ev["batch_size"], progress=progress,
                               description=f"evaluate {split}")
    labels = prepared.labels[rows]
    temperature = calibration["temperature"]
    probs = calibrated_probabilities(logits, temperature)
    rule = DecisionRule.from_dict(calibration["decision"], meta["classes"])
    decided = rule.decide(probs)
    # Lesion-level (cluster) bootstrap: images of one lesion are resampled together.
    records = prepared.dataset.records.iloc[rows]
    groups = records["lesion_id"].to_numpy() if ev["bootstrap_unit"] == "lesion" else None
    metrics = compute_classification_metrics(probs, labels, meta["classes"], n_bootstrap=ev["n_bootstrap"],
                                             seed=config["seed"], groups=groups, predictions=decided)
    if not rule.is_raw:
        raw = compute_classification_metrics(probs, labels, meta["classes"], n_bootstrap=ev["n_bootstrap"],
                                             seed=config["seed"], groups=groups)
        metrics["raw_argmax"] = {key: raw[key] for key in ("accuracy", "balanced_accuracy", "macro_f1",
                                                           "confusion_matrix", "per_class", "ci95")}
    metrics["decision_rule"] = rule.to_dict()
    flags = rule.melanoma_flags(probs)
    if flags is not None:
        metrics["melanoma_flag"] = melanoma_flag_metrics(flags, labels == list(meta["classes"]).index("mel"),
                                                         rule.melanoma)
    by_source = figures_by_source(records["source"] if "source" in records else None, probs, labels,
                                  meta["classes"], decided)
    if by_source:
        metrics["by_source"] = by_source
    metrics["temperature"] = temperature
    metrics["temperature_fitted_for_tta"] = calibration["tta"]
    metrics["ece_before_temperature"] = float(expected_calibration_error(calibrated_probabilities(logits), labels))
    metrics["split"] = split
    context = {
        "model": model_name(meta),
        "image_size": pre.image_size,
        "geometry": pre.geometry,
        "backbone_weights_at_start": meta.get("weights_source", "unknown"),
        "checkpoint": str(checkpoint),
        "checkpoint_epoch": meta.get("epoch"),
        "data": f"{prepared.dataset.name} ({prepared.dataset.root})",
        "split": f"{split} ({len(labels)} images)",
        "split_method": split_method(prepared, split, own_run=split_dir is not None),
        "tta": "flips (4 views)" if ev["tta"] else "none",
        "runtime": predictor.runtime,
        "temperature": round(temperature, 4),
        "temperature_source": (f"fitted on {calibration['fitted_on']}"
                               + (" with flip TTA" if calibration["tta"] else " without TTA"))
        if calibration["fitted_on"] else "none (uncalibrated)",
        "decision_rule": "raw argmax" if rule.is_raw else f"{rule.objective} (fitted on {rule.fitted_on})",
        "synthetic_data": bool(prepared.dataset.is_synthetic),
        "dermalens_version": __version__,
        "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra_context or {}),
    }
    if split_dir is not None and split == "val" and str(calibration["fitted_on"]).startswith("the validation split"):
        # The temperature and decision rule were fitted on these very images: their figures flatter the model.
        context["caution"] = ("the temperature and decision rule were fitted on this validation split: these "
                              "figures are optimistic; the test split's are the model's")
        warnings.warn(f"{split_dir}: {context['caution']}", stacklevel=2)
    low_resolution = low_resolution_note(prepared, pre)
    if low_resolution:
        context["low_resolution"] = low_resolution
        warnings.warn(low_resolution, stacklevel=2)
    if calibration["fitted_on"] and calibration["tta"] != ev["tta"]:
        context["calibration_note"] = (f"the temperature was fitted with TTA {'on' if calibration['tta'] else 'off'}; "
                                       f"this evaluation ran with TTA {'on' if ev['tta'] else 'off'}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if prepared.issues:   # data.on_bad_data=skip: what was left out is listed beside the figures it changes
        write_issues_csv(prepared.issues, out_dir / ISSUES_FILE)
        context["data_issues"] = f"{len(prepared.issues)} bad data item(s) left out, listed in {ISSUES_FILE}"
    elif (out_dir / ISSUES_FILE).is_file():   # an earlier evaluation's list must not pass for this one's
        (out_dir / ISSUES_FILE).unlink()
    for earlier in out_dir.glob(f"{MEDMNIST_FLAG}*@*.csv"):   # an earlier evaluation's file must not pass for this one's
        earlier.unlink()
    if prepared.dataset.name == "dermamnist" and split in ("train", "val", "test") and metrics["auc_macro"] is not None:
        # Rows are in the .npz order (dermamnist_<split>_<index>), as MedMNIST's evaluator expects.
        source_size = int(prepared.dataset.images.shape[1]) if prepared.dataset.images is not None else 28
        context["medmnist_result_file"] = write_medmnist_result(
            out_dir, split, source_size, probs, labels, metrics["auc_macro"], config["name"]).name
    write_predictions_csv(out_dir / PREDICTIONS_FILE, records, labels, probs, probs.argmax(axis=1), decided,
                          meta["classes"], flags)
    metrics_csv = RunFolder(out_dir).metrics_log   # training curves, when out_dir is the run itself
    # A run's own split is named with the run; other data with the data set (a checkpoint on external data
    # carries a default config whose name says nothing).
    scored = config["name"] if split_dir is not None else f"{prepared.dataset.root.name} ({split_method(prepared, split)})"
    write_evaluation_report(out_dir, metrics, probs, labels, title=f"dermalens evaluation: {scored}",
                            context=context, metrics_csv=metrics_csv if metrics_csv.is_file() else None)
    return {**metrics, "context": context}


def low_resolution_note(prepared: PreparedData, pre) -> str | None:
    """What `dermalens predict` cautions per image, for a data set held in memory at one size (DermaMNIST's
    28-px thumbnails given to a 224-px model): None when the model sees it enlarged at most MAX_ENLARGEMENT times.

    Image files are cached at the model's size, their own sizes not kept, so only in-memory sets are judged.
    """
    images = getattr(prepared.dataset, "images", None)
    if images is None or prepared.dataset.is_synthetic:
        return None
    height, width = int(images.shape[1]), int(images.shape[2])
    factor = enlargement(height, width, pre.image_size, pre.geometry)
    if factor <= MAX_ENLARGEMENT:
        return None
    return (f"every image is {width} x {height} px, enlarged {factor:.1f}x to the model's {pre.image_size}-px "
            "input, far from the images it was trained and measured on: these figures say little of the model "
            "on its own kind of images")


def melanoma_flag_metrics(flags: np.ndarray, is_melanoma: np.ndarray, point) -> dict:
    """Sensitivity and specificity of the shipped melanoma operating point on this data."""
    positives, negatives = is_melanoma.sum(), (~is_melanoma).sum()
    return {
        "threshold": point.threshold,
        "target_specificity": point.specificity,
        "sensitivity": float(flags[is_melanoma].mean()) if positives else None,
        "specificity": float((~flags[~is_melanoma]).mean()) if negatives else None,
        "flagged": int(flags.sum()),
    }


def write_predictions_csv(path: Path, records, labels: np.ndarray, probs: np.ndarray, raw: np.ndarray,
                          decided: np.ndarray, classes, melanoma_flags: np.ndarray | None) -> Path:
    """One row per image: ids, source, true class, each class's probability, the argmax and the rule's class.

    For error analysis, paired comparisons of two models and re-scoring with other metrics.
    """
    classes = list(classes)
    table = pd.DataFrame({
        "image_id": records["image_id"].to_numpy(),
        "lesion_id": records["lesion_id"].to_numpy(),
        **({"source": records["source"].to_numpy()} if "source" in records else {}),
        "true_class": np.asarray(classes, dtype=object)[labels],
        **{f"p_{code}": np.round(probs[:, k], 6) for k, code in enumerate(classes)},
        "predicted_argmax": np.asarray(classes, dtype=object)[raw],
        "predicted": np.asarray(classes, dtype=object)[decided],
    })
    if melanoma_flags is not None:
        table["melanoma_flag"] = melanoma_flags.astype(int)
    return atomic_write_text(path, table.to_csv(index=False))
