"""The calibration record beside a model: `<stem>.calibration.json`, `CheckpointError`, and
`check_checkpoint_file` (is a file a checkpoint's container at all).

The one read/write pair for the temperature that predict, serve and export
apply. Only training writes it, fitted on the run's own validation split for
the predictor that is served (`tta`); any later evaluation reads it and
changes nothing. <stem>.ckpt and <stem>.onnx share it.

Kept free of torch (as is `CheckpointError`, which it raises), so that the
ONNX predictor can read it without loading PyTorch.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic_io import atomic_write_json


class CheckpointError(ValueError):
    """A checkpoint, or the calibration record beside it, that is missing or unreadable."""


def check_checkpoint_file(path: str | Path) -> None:
    """CheckpointError when `path` is missing, empty or not a zip archive (what torch.save writes).

    Cheap and torch-free: said before any slower work on a file that cannot be a checkpoint (an ONNX export,
    or full unpickling), rather than after it.
    """
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint (torch.save writes a zip "
                              "archive, and this file is not one)")


def calibration_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_suffix(".calibration.json")


def read_calibration(checkpoint: str | Path) -> dict:
    """{"temperature", "tta", "fitted_on", "decision"}; temperature 1.0 (uncalibrated) and no decision
    rule (the raw argmax) when there is no record. "decision" is `inference.postprocess.DecisionRule.to_dict()`."""
    path = calibration_path(checkpoint)
    if not path.is_file():
        return {"temperature": 1.0, "tta": False, "fitted_on": None, "decision": None}
    try:
        record = json.loads(path.read_text())
        temperature = float(record["temperature"])
        decision = record.get("decision")
        if decision is not None and not isinstance(decision.get("class_bias", {}), dict):
            raise ValueError("decision.class_bias is not a mapping")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"calibration record {path} is unreadable ({error}); delete it or retrain") from None
    return {"temperature": temperature, "tta": bool(record.get("tta", False)), "fitted_on": record.get("fitted_on"),
            "decision": decision}


def write_calibration(checkpoint: str | Path, temperature: float, tta: bool, n_images: int,
                      fitted_on: str = "val", decision: dict | None = None) -> Path:
    """The record beside a checkpoint: its temperature, TTA, and (optionally) the fitted decision rule."""
    record = {"temperature": float(temperature), "tta": bool(tta), "fitted_on": fitted_on, "n_images": int(n_images)}
    if decision is not None:
        record["decision"] = decision
    return atomic_write_json(calibration_path(checkpoint), record)
