"""Load a trained classifier from a dermalens (Lightning) checkpoint, without Lightning."""
from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from ..classes import validate_class_set
from .calibration_record import CheckpointError, calibration_path, read_calibration, write_calibration
from .classifier import LesionClassifier, ModelConfig, Preprocessing, create_classifier

# The calibration record and CheckpointError live in a torch-free module (the ONNX
# predictor reads them without PyTorch); they are imported from here as before.
__all__ = ["CHECKPOINT_KEY", "CheckpointError", "calibration_path", "load_classifier", "read_calibration",
           "read_checkpoint_metadata", "write_calibration"]

CHECKPOINT_KEY = "dermalens"


# Checkpoints already loaded by full unpickling in this process: the warning is said once per file.
_UNPICKLED: set[Path] = set()


def read_checkpoint_metadata(path: str | Path) -> dict:
    """The whole checkpoint dict, read with `torch.load(weights_only=True)` where the file allows it.

    A .ckpt is a pickle, and unpickling can run any code the file's author put
    in it. weights_only=True accepts tensors and plain data only, which is all
    a dermalens checkpoint holds. A file that needs more (an older Lightning
    checkpoint with an argparse.Namespace, another tool's objects) is loaded
    fully only after a warning that says so; models meant for others travel
    as packages (`dermalens package`), which load without unpickling.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch.save writes zip archives: anything else is not a checkpoint, and
        # retrying it with full unpickling would only add a misleading warning.
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint") from None
        if path.resolve() not in _UNPICKLED:
            _UNPICKLED.add(path.resolve())
            refused = re.search(r"GLOBAL (\S+)", str(error))   # the first object weights_only refused
            detail = f" ({refused.group(1)})" if refused else ""
            warnings.warn(
                f"{path} holds Python objects besides tensors and plain data{detail}, so it is loaded by "
                f"full unpickling, which can run "
                f"any code its author put in it: load checkpoints only from people you trust, and share models "
                f"as packages (`dermalens package`), which load without unpickling", UserWarning, stacklevel=2)
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            raise CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from None
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from None
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise CheckpointError(f"{path} is not a dermalens checkpoint (no '{CHECKPOINT_KEY}' entry)")
    return checkpoint


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[LesionClassifier, dict]:
    """Returns the model in eval mode and its metadata (classes, preprocessing, metrics...)."""
    checkpoint = read_checkpoint_metadata(path)
    meta = dict(checkpoint[CHECKPOINT_KEY])
    config = ModelConfig(**meta["model_config"])
    try:
        meta["classes"] = list(validate_class_set(meta.get("classes") or (), f"{path}: the saved class list",
                                                  num_outputs=config.num_classes))
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    model = create_classifier(config, load_pretrained=False)
    state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    model.weights_source = f"checkpoint:{Path(path).name}"
    meta["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"])
    meta["checkpoint"] = str(path)
    return model.to(device).eval(), meta
