"""Load a trained classifier from a dermalens (Lightning) checkpoint, without Lightning."""
from __future__ import annotations

from pathlib import Path

import torch

from ..classes import CLASS_CODES
from .classifier import LesionClassifier, ModelConfig, Preprocessing, create_classifier

CHECKPOINT_KEY = "dermalens"


class CheckpointError(ValueError):
    pass


def read_checkpoint_metadata(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from None
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise CheckpointError(f"{path} is not a dermalens checkpoint (no '{CHECKPOINT_KEY}' entry)")
    return checkpoint


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[LesionClassifier, dict]:
    """Returns the model in eval mode and its metadata (classes, preprocessing, metrics...)."""
    checkpoint = read_checkpoint_metadata(path)
    meta = dict(checkpoint[CHECKPOINT_KEY])
    if list(meta["classes"]) != list(CLASS_CODES):
        raise CheckpointError(f"{path} was trained for classes {meta['classes']}, this dermalens knows {CLASS_CODES}")
    config = ModelConfig(**meta["model_config"])
    model = create_classifier(config, load_pretrained=False)
    state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    model.weights_source = f"checkpoint:{Path(path).name}"
    meta["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"])
    meta["checkpoint"] = str(path)
    return model.to(device).eval(), meta
