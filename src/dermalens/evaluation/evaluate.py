"""Evaluate a checkpoint on one split: predictions, calibration, metrics, report.

Temperature scaling is fitted on the validation split only; the reported
split (test by default) is touched once, with the temperature fixed.
"""
from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..classes import CLASS_CODES
from ..models.checkpoint import load_classifier
from .calibration import apply_temperature, fit_temperature
from .metrics import compute_classification_metrics, expected_calibration_error
from .report import atomic_write_json, write_evaluation_report


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def calibration_sidecar(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".calibration.json")


def evaluate_checkpoint(config: dict, checkpoint: Path, out_dir: Path, *, prepared=None, split: str | None = None,
                        progress: bool = True, extra_context: dict | None = None) -> dict:
    from ..inference.predictor import predict_logits
    from ..training.run import prepare_data

    ev = config["evaluation"]
    split = split or ev["split"]
    prepared = prepared or prepare_data(config, out_dir if (out_dir / "split.csv").is_file() else None, progress)
    model, meta = load_classifier(checkpoint)
    pre = meta["preprocessing"]
    if pre.image_size != prepared.images.shape[1]:
        raise ValueError(f"checkpoint expects {pre.image_size}px images, the prepared data is {prepared.images.shape[1]}px")

    def logits_of(name: str) -> tuple[np.ndarray, np.ndarray]:
        rows = np.flatnonzero(prepared.split == name)
        if len(rows) == 0:
            raise ValueError(f"split '{name}' is empty; nothing to evaluate")
        logits = predict_logits(model, prepared.images[rows], pre, ev["batch_size"], tta=ev["tta"],
                                progress=progress, description=f"evaluate {name}")
        return logits, prepared.labels[rows]

    temperature = 1.0
    if ev["temperature_scaling"] and split != "val":
        val_logits, val_labels = logits_of("val")
        temperature = float(fit_temperature(val_logits, val_labels))
    logits, labels = logits_of(split)
    probs = apply_temperature(logits, temperature)
    metrics = compute_classification_metrics(probs, labels, CLASS_CODES, n_bootstrap=ev["n_bootstrap"],
                                             seed=config["seed"])
    metrics["temperature"] = temperature
    metrics["ece_before_temperature"] = float(expected_calibration_error(apply_temperature(logits, 1.0), labels))
    metrics["split"] = split
    context = {
        "model": f"{meta['model_config']['backbone']} + {'CBAM' if meta['model_config']['cbam'] else 'no CBAM'}",
        "image_size": pre.image_size,
        "backbone_weights_at_start": meta.get("weights_source", "unknown"),
        "checkpoint": str(checkpoint),
        "checkpoint_epoch": meta.get("epoch"),
        "data": f"{prepared.dataset.name} ({prepared.dataset.root})",
        "split": f"{split} ({len(labels)} images)",
        "split_method": "official splits (per image)" if prepared.dataset.records["official_split"].notna().all()
        else "grouped by lesion_id, stratified",
        "tta": "flips (4 views)" if ev["tta"] else "none",
        "temperature": round(temperature, 4),
        "synthetic_data": bool(prepared.dataset.is_synthetic),
        "dermalens_version": __version__,
        "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra_context or {}),
    }
    metrics_csv = out_dir / "logs" / "metrics.csv"
    write_evaluation_report(out_dir, metrics, probs, labels, title=f"dermalens evaluation: {config['name']}",
                            context=context, metrics_csv=metrics_csv if metrics_csv.is_file() else None)
    atomic_write_json(calibration_sidecar(Path(checkpoint)), {"temperature": temperature, "fitted_on": "val"})
    return json.loads((out_dir / "metrics.json").read_text())
