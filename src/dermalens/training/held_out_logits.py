"""A trained model's logits on images it did not train on: through the cached frozen trunk when the run has one.

Shared by cross-validation (each fold model on its own fold) and the distilled student (each out-of-fold
student on the fold it was trained without).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data.prepare import PreparedData
from ..inference.predictor import predict_logits
from ..models.checkpoint import load_classifier
from .frozen_trunk import FLIP_VIEWS, TrunkActivations


def out_of_fold_logits(config: dict, checkpoint: Path, prepared: PreparedData, rows: np.ndarray,
                       activations: TrunkActivations | None, progress: bool) -> np.ndarray:
    """Logits of `rows` (with the evaluation's TTA) from one fold model: through the cached trunk when there is one."""
    model, meta = load_classifier(checkpoint)
    tta = config["evaluation"]["tta"]
    if activations is None:
        return predict_logits(model, prepared.images[rows], meta["preprocessing"], config["evaluation"]["batch_size"],
                              tta=tta, progress=progress, description="out-of-fold")
    views = list(range(FLIP_VIEWS)) if tta else [0]
    activations.ensure(rows, views)
    return logits_from_trunk(model, activations, rows, views)


def logits_from_trunk(model: torch.nn.Module, activations: TrunkActivations, rows: np.ndarray,
                      views: Sequence[int]) -> np.ndarray:
    """(len(rows), C) logits of a model that shares the cached trunk: the mean over `views` (already cached)."""
    stages, views, logits = activations.spec.stages, list(views), []
    with torch.inference_mode():
        for start in range(0, len(rows), 64):
            chunk = np.asarray(activations.array[rows[start:start + 64]][:, views], dtype=np.float32)
            flat = torch.from_numpy(chunk).flatten(0, 1)
            out = model.forward_from_trunk(flat, stages).unflatten(0, chunk.shape[:2]).mean(dim=1)
            logits.append(out.float().numpy())
    return np.concatenate(logits) if logits else np.zeros((0, model.config.num_classes), dtype=np.float32)
