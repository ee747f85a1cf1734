"""Evaluate a checkpoint on one split: predictions, metrics, report. No side effects.

Like torchvision's reference `evaluate`, this computes and reports; it
writes only into its output folder. The temperature comes from the model's
own calibration record, which training alone writes (fitted on the run's
validation split, for the predictor that is served: same TTA setting).
"""
from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..data.prepare import PreparedData, prepare_data
from ..inference.predictor import predict_logits
from ..models.checkpoint import load_classifier, read_calibration
from ..models.checkpoint import write_calibration as record_calibration
from .calibration import apply_temperature, fit_temperature
from .medmnist import write_medmnist_result
from .metrics import compute_classification_metrics, expected_calibration_error
from .report import write_evaluation_report

SPLITS = ("train", "val", "test", "all")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def split_method(prepared: PreparedData, split: str) -> str:
    """How the evaluated images were chosen, said plainly (a folder without lesion ids is split per image)."""
    if split == "all":
        return "every image of the data set (no split)"
    records = prepared.dataset.records
    if records["official_split"].notna().all():
        return "official splits (per image)"
    if (records["lesion_id"] == records["image_id"]).all():
        return "split per image (no lesion ids): photos of one lesion may sit in different splits"
    return f"grouped by lesion_id, stratified ({prepared.split_source})"


def evaluate_checkpoint(config: dict, checkpoint: Path, out_dir: Path, *, prepared: PreparedData | None = None,
                        split: str | None = None, split_dir: Path | None = None, progress: bool = True,
                        extra_context: dict | None = None, write_calibration: bool = False) -> dict:
    """Metrics of `checkpoint` on one split of the config's data, written into `out_dir` only.

    split: train | val | test | all (every usable image: an external set scored whole).
    split_dir: the run folder whose split.csv to use. write_calibration: training's own call
    only: fit the temperature on this data's validation split and record it beside the checkpoint.
    """
    ev = config["evaluation"]
    split = split or ev["split"]
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    model, meta = load_classifier(checkpoint)
    # The data is labelled by the model's own class set (images of other classes are bad data items).
    prepared = prepared or prepare_data(config, split_dir, progress, classes=meta["classes"],
                                        split_needed=split != "all")
    if tuple(prepared.classes) != tuple(meta["classes"]):
        raise ValueError(f"the data is labelled with classes {', '.join(prepared.classes)}; {checkpoint} predicts "
                         f"{', '.join(meta['classes'])}")
    pre = meta["preprocessing"]
    if pre.image_size != prepared.images.shape[1]:
        raise ValueError(f"checkpoint expects {pre.image_size}px images, the prepared data is {prepared.images.shape[1]}px")

    def logits_of(name: str) -> tuple[np.ndarray, np.ndarray]:
        rows = prepared.rows(name)
        if len(rows) == 0:
            raise ValueError(f"split '{name}' of {prepared.dataset.root} is empty; nothing to evaluate"
                             + ("" if name == "all" else " (use --split all to score every image)"))
        logits = predict_logits(model, prepared.images[rows], pre, ev["batch_size"], tta=ev["tta"],
                                progress=progress, description=f"evaluate {name}")
        return logits, prepared.labels[rows]

    if write_calibration:
        temperature, n_val = 1.0, 0
        if ev["temperature_scaling"]:
            val_logits, val_labels = logits_of("val")
            temperature, n_val = float(fit_temperature(val_logits, val_labels)), len(val_labels)
        record_calibration(checkpoint, temperature, ev["tta"], n_val)
    calibration = read_calibration(checkpoint)
    temperature = calibration["temperature"]
    logits, labels = logits_of(split)
    probs = apply_temperature(logits, temperature)
    # Lesion-level (cluster) bootstrap: images of one lesion are resampled together.
    groups = (prepared.dataset.records["lesion_id"].to_numpy()[prepared.rows(split)]
              if ev["bootstrap_unit"] == "lesion" else None)
    metrics = compute_classification_metrics(probs, labels, meta["classes"], n_bootstrap=ev["n_bootstrap"],
                                             seed=config["seed"], groups=groups)
    metrics["temperature"] = temperature
    metrics["temperature_fitted_for_tta"] = calibration["tta"]
    metrics["ece_before_temperature"] = float(expected_calibration_error(apply_temperature(logits, 1.0), labels))
    metrics["split"] = split
    context = {
        "model": f"{meta['model_config']['backbone']} + {'CBAM' if meta['model_config']['cbam'] else 'no CBAM'}",
        "image_size": pre.image_size,
        "geometry": pre.geometry,
        "backbone_weights_at_start": meta.get("weights_source", "unknown"),
        "checkpoint": str(checkpoint),
        "checkpoint_epoch": meta.get("epoch"),
        "data": f"{prepared.dataset.name} ({prepared.dataset.root})",
        "split": f"{split} ({len(labels)} images)",
        "split_method": split_method(prepared, split),
        "tta": "flips (4 views)" if ev["tta"] else "none",
        "temperature": round(temperature, 4),
        "temperature_source": ("fitted on the run's validation split"
                               + (" with flip TTA" if calibration["tta"] else " without TTA"))
        if calibration["fitted_on"] else "none (uncalibrated)",
        "synthetic_data": bool(prepared.dataset.is_synthetic),
        "dermalens_version": __version__,
        "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra_context or {}),
    }
    if calibration["fitted_on"] and calibration["tta"] != ev["tta"]:
        context["calibration_note"] = (f"the temperature was fitted with TTA {'on' if calibration['tta'] else 'off'}; "
                                       f"this evaluation ran with TTA {'on' if ev['tta'] else 'off'}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if prepared.dataset.name == "dermamnist" and split in ("train", "val", "test") and metrics["auc_macro"] is not None:
        # Rows are in the .npz order (dermamnist_<split>_<index>), as MedMNIST's evaluator expects.
        source_size = int(prepared.dataset.images.shape[1]) if prepared.dataset.images is not None else 28
        context["medmnist_result_file"] = write_medmnist_result(
            out_dir, split, source_size, probs, metrics["auc_macro"], metrics["accuracy"], config["name"]).name
    metrics_csv = Path(out_dir) / "logs" / "metrics.csv"
    write_evaluation_report(out_dir, metrics, probs, labels, title=f"dermalens evaluation: {config['name']}",
                            context=context, metrics_csv=metrics_csv if metrics_csv.is_file() else None)
    return json.loads((Path(out_dir) / "metrics.json").read_text())

